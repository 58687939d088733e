"""MR-SP stage 1: vision encoding sharded by temporal patch over sp ranks (4 gloo CPU processes, tiny model).

Reference: the single-process `adapter.encode_video` of the whole batch, computed in the parent.
Tolerance: atol 1e-6, rtol 0 (measured here: 0.0, i.e. bit-identical; Qwen2.5-VL's vision attention never
crosses temporal patches, but the per-rank GEMMs see fewer rows, and row-count-dependent kernel blocking
could change rounding on other CPUs). Vision-tower gradients with a trainable tower (cache bypassed):
|g_sp - g| <= 1e-5 * max|g| per tensor. One 4-process world runs every case (sp=4, then two sp=2 groups);
the run has a timeout so a hang fails instead of blocking.
"""

from __future__ import annotations

import pytest
import torch
from tiny_model import random_videos, tiny_model
from videos import write_video

import longrl.models as M
from longrl.models.embedding_store import EmbeddingStore, video_key_parts
from longrl.models.tiny import TINY_PROCESSOR
from longrl.models.video_inputs import encode_video_file
from longrl.parallel.groups import init_parallel
from longrl.parallel.launch import run_local
from longrl.parallel.vision_shard import (
    VideoPixels,
    encode_video_file_sharded,
    encode_videos_sharded,
    get_or_encode_sharded,
    split_temporal,
)
from longrl.video.sampling import SamplingConfig

# (5, ..) splits 2/1/1/1 over 4 ranks and 3/2 over 2; (1, ..) and (3, ..) leave ranks empty at sp 4;
# (1, 10, 12) is wider than one vision attention window; (8, 2, 2) splits evenly.
GRIDS = [(5, 4, 6), (1, 10, 12), (3, 2, 4), (8, 2, 2)]
SINGLE = [(3, 4, 6)]  # one video alone: sp 2 -> 2/1, sp 4 -> rank 3 has nothing
TINY_T = [(1, 4, 4)]  # grid_t = 1 < sp: one rank encodes, the others only join the gather
WORLD = 4
TIMEOUT_S = 240


def _worker(model, cases, grad_case, video_path, disk_dir):
    """Runs on every rank: each case under sp = 4 (one group) and sp = 2 (two groups); returns results."""
    adapter = M.wrap_model(model)
    adapter.set_vision_trainable(False)
    calls = {"tower": 0, "load": 0}
    adapter.vision_tower.register_forward_hook(lambda *_: calls.__setitem__("tower", calls["tower"] + 1))
    out = {}
    for sp in (4, 2):
        state = init_parallel(sp)
        group = state.sp_group
        with torch.no_grad():
            for name, (pixels, grid) in cases.items():
                out[(sp, name)] = encode_videos_sharded(adapter, pixels, grid, group)

        # The store: first call misses (sharded encode), second call hits without the tower or the loader.
        pixels, grid = cases["batch"]
        sizes = grid.prod(-1).tolist()
        starts = [sum(sizes[:i]) for i in range(len(sizes))]

        def load(i, pixels=pixels, grid=grid, starts=starts, sizes=sizes):
            calls["load"] += 1
            return VideoPixels(pixels[starts[i] : starts[i] + sizes[i]], tuple(grid[i].tolist()), 0.5 + i)

        store = EmbeddingStore.for_adapter(adapter, capacity_bytes=1 << 24)
        parts = [
            video_key_parts({"name": f"video{i}"}, sampling={"fps": 1.0}, pixel_budget=None,
                            encoder_fingerprint=adapter.vision_fingerprint())
            for i in range(len(sizes))
        ]  # fmt: skip
        with torch.no_grad():
            calls.update(tower=0, load=0)
            first = get_or_encode_sharded(adapter, store, parts, load, group)
            miss_calls = dict(calls)
            calls.update(tower=0, load=0)
            second = get_or_encode_sharded(adapter, store, parts, load, group)
            hit_calls = dict(calls)
            # Only sp rank 0 holds an entry for a new key: the group must encode it together, no deadlock.
            lone = [
                video_key_parts({"name": "lone"}, sampling=None, pixel_budget=None, encoder_fingerprint="x")
            ]
            if state.sp_rank == 0:
                store.get_or_encode(lone[0], lambda: load(0).pixel_values_videos.new_zeros(30, 128))
            calls.update(tower=0, load=0)
            divergent = get_or_encode_sharded(adapter, store, lone, load, group)
            divergent_calls = dict(calls)
        out[(sp, "store")] = {
            "first": [e.embeds for e in first],
            "second": [e.embeds for e in second],
            "meta": [(e.grid_thw, e.second_per_grid_t) for e in second],
            "miss_calls": miss_calls,
            "hit_calls": hit_calls,
            "divergent": divergent[0].embeds,
            "divergent_calls": divergent_calls,
            "stats": {k: v for k, v in store.stats().items() if k != "cache"},
        }

        # Trainable tower: the store is bypassed and gradients flow back through the gather.
        pixels, grid, weights = grad_case
        adapter.set_vision_trainable(True)
        adapter.model.zero_grad(set_to_none=True)
        embeds = encode_videos_sharded(adapter, pixels, grid, group)
        # Like the decoder shard, each rank's loss uses only some rows: rank r takes rows r, r+sp, ...
        loss = sum((e * w)[state.sp_rank :: sp].sum() for e, w in zip(embeds, weights, strict=True))
        loss.backward()
        grads = torch.cat([p.grad.reshape(-1) for p in adapter.vision_tower.parameters()])
        torch.distributed.all_reduce(grads, group=group)
        adapter.set_vision_trainable(False)
        out[(sp, "grads")] = grads

        # A real file through decode + preprocess + sharded tower, with a disk tier shared by the ranks of
        # the sp group: first call encodes (every rank writes the same file atomically), a fresh store reads
        # it back. One folder per sp group: with sp 2 the other group may write the same file first, and
        # this group's first call would then be a disk hit.
        file_out = []
        for _ in range(2):
            disk_store = EmbeddingStore.for_adapter(
                adapter, capacity_bytes=1 << 24, disk_dir=f"{disk_dir}/{sp}/{state.dp_rank}"
            )
            calls.update(tower=0, load=0)
            with torch.no_grad():
                emb = encode_video_file_sharded(adapter, disk_store, video_path, SamplingConfig(num_frames=8),
                                                TINY_PROCESSOR.video, group, isolate=False)  # fmt: skip
            file_out.append((emb.embeds, emb.grid_thw, calls["tower"], disk_store.stats()))
        out[(sp, "file")] = file_out
    return out


def _results(tmp_dir):
    model, _ = tiny_model()
    adapter = M.wrap_model(model)
    cases = {"batch": random_videos(GRIDS, seed=1), "single": random_videos(SINGLE, seed=2),
             "tiny_t": random_videos(TINY_T, seed=3)}  # fmt: skip
    g = torch.Generator().manual_seed(4)
    pixels, grid = random_videos([(3, 4, 4), (2, 2, 4)], seed=5)
    weights = [torch.randn(adapter.num_video_tokens(t), adapter.hidden_size, generator=g) for t in grid]
    grad_case = (pixels, grid, weights)

    with torch.no_grad():
        refs = {name: adapter.encode_video(p, gr) for name, (p, gr) in cases.items()}
    trainable = M.wrap_model(tiny_model(fresh=True)[0])
    trainable.set_vision_trainable(True)
    loss = sum((e * w).sum() for e, w in zip(trainable.encode_video(pixels, grid), weights, strict=True))
    loss.backward()
    ref_grads = torch.cat([p.grad.reshape(-1) for p in trainable.vision_tower.parameters()])

    video_path = write_video(tmp_dir / "clip.mp4", num_frames=16, fps=8)
    with torch.no_grad():
        refs["file"] = encode_video_file(adapter, None, video_path, SamplingConfig(num_frames=8),
                                         TINY_PROCESSOR.video, isolate=False)  # fmt: skip
    results = run_local(_worker, WORLD, model, cases, grad_case, str(video_path), str(tmp_dir / "embeddings"),
                        timeout_s=TIMEOUT_S)  # fmt: skip
    return refs, ref_grads, results


@pytest.fixture(scope="module")
def vision_runs(tmp_path_factory):
    return _results(tmp_path_factory.mktemp("parallel_vision"))


def test_split_temporal_is_even_ordered_and_rotates():
    assert split_temporal(5, 4) == [2, 1, 1, 1]
    assert split_temporal(5, 4, offset=1) == [1, 2, 1, 1]
    assert split_temporal(6, 4, offset=3) == [2, 1, 1, 2]
    assert split_temporal(1, 4, offset=2) == [0, 0, 1, 0]
    assert split_temporal(8, 4) == [2, 2, 2, 2]
    for t in range(0, 12):
        for sp in (1, 2, 3, 4):
            for offset in range(sp):
                counts = split_temporal(t, sp, offset)
                assert sum(counts) == t and max(counts) - min(counts) <= 1


@pytest.mark.parametrize("sp", [4, 2])
@pytest.mark.parametrize("case", ["batch", "single", "tiny_t"])
def test_sharded_encoding_equals_whole_video(vision_runs, sp, case):
    refs, _, results = vision_runs
    for rank, out in enumerate(results):
        got = out[(sp, case)]
        assert len(got) == len(refs[case])
        for i, (a, b) in enumerate(zip(got, refs[case], strict=True)):
            assert a.shape == b.shape, (rank, i)
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=f"sp={sp} rank={rank} video={i}")


@pytest.mark.parametrize("sp", [4, 2])
def test_store_hit_on_second_call_runs_no_tower(vision_runs, sp):
    refs, _, results = vision_runs
    for rank, out in enumerate(results):
        store = out[(sp, "store")]
        n = len(GRIDS)
        # Miss: every video loaded once and the tower run once (one batched call) on every rank (each has
        # patches of the 4-video batch at sp 2 and 4).
        assert store["miss_calls"] == {"tower": 1, "load": n}, rank
        assert store["hit_calls"] == {"tower": 0, "load": 0}, rank
        for a, b, ref in zip(store["first"], store["second"], refs["batch"], strict=True):
            assert torch.equal(a, b)
            torch.testing.assert_close(a, ref, atol=1e-6, rtol=0)
        assert store["meta"] == [(tuple(g), 0.5 + i) for i, g in enumerate(GRIDS)]


@pytest.mark.parametrize("sp", [4, 2])
def test_hit_on_one_rank_and_miss_on_others_encodes_together(vision_runs, sp):
    refs, _, results = vision_runs
    for rank, out in enumerate(results):
        store = out[(sp, "store")]
        # The group encoded (each rank's own stored zeros, if any, are kept by its store: sp rank 0's entry
        # was a hit there and is served as stored). Every rank ran the collective without hanging.
        assert store["divergent_calls"]["load"] == 1
        sp_rank = rank % sp
        if sp_rank == 0:
            assert torch.equal(store["divergent"], torch.zeros(30, 128))
            assert store["stats"]["hits"] == n_hits(True)
        else:
            torch.testing.assert_close(store["divergent"], refs["batch"][0], atol=1e-6, rtol=0)
            assert store["stats"]["hits"] == n_hits(False)


def n_hits(rank_zero: bool) -> int:
    """Store hits per rank in the worker: the 4 videos of the second call, plus the lone entry on sp rank 0."""
    return len(GRIDS) + int(rank_zero)


@pytest.mark.parametrize("sp", [4, 2])
def test_trainable_tower_gradients_flow_through_the_gather(vision_runs, sp):
    _, ref_grads, results = vision_runs
    for rank, out in enumerate(results):
        grads = out[(sp, "grads")]
        err = (grads - ref_grads).abs().max().item()
        assert err <= 1e-5 * ref_grads.abs().max().item(), (rank, err)


@pytest.mark.parametrize("sp", [4, 2])
def test_video_file_sharded_through_decode_and_a_shared_disk_tier(vision_runs, sp):
    refs, _, results = vision_runs
    ref = refs["file"]
    for rank, out in enumerate(results):
        (first, grid1, tower1, stats1), (second, grid2, tower2, stats2) = out[(sp, "file")]
        assert grid1 == grid2 == ref.grid_thw
        assert ref.grid_thw[0] >= 2  # several temporal patches to split
        torch.testing.assert_close(first, ref.embeds, atol=1e-6, rtol=0)
        assert torch.equal(second, first)
        # Every rank has a slice of the 4 temporal patches at sp 2 and 4: one tower call on the miss.
        # (The group decided "miss" before anyone wrote; by the time a rank stores its fresh copy another
        # rank's identical file may exist, which that rank then reads: a miss or a disk hit, never both.)
        assert (tower1, stats1["misses"] + stats1["disk_hits"], stats1["hits"]) == (1, 1, 0), rank
        assert (tower2, stats2["misses"], stats2["disk_hits"]) == (0, 0, 1), rank
