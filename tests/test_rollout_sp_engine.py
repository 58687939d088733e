"""The sequence-parallel `hf` engine (`SPHFEngine`, sp = 2 over gloo) vs the single-process `HFEngine`.

Setup: the tiny Qwen2.5-VL (fp32) from a model folder, two real short videos (tests/videos.py) encoded by
the project's own pipeline, two prompts of different lengths (so the batch is padded), and a text-only
batch of 3- and 5-token prompts (fewer tokens than the 2*sp zigzag chunks: shard padding on both ranks).
All sp-2 cases run in ONE 2-process world; the references run in this process.

References and tolerances:
- Greedy tokens, finish reasons and texts: exactly those of `HFEngine` (batched), for ring and Ulysses
  prefill, zigzag and contiguous layouts; logprobs within 1e-5 absolute.
- Sampled (temperature 1, seed 5, n = 3) tokens: exactly those of `HFEngine(prompt_batch_size=1)` at the
  same seed (the SP engine decodes one prompt at a time, so the generator is consumed in the same order);
  logprobs within 1e-5.
- A stop token met mid-way (the sampled case with an extra stop id) and max_new_tokens reached (ignore_eos):
  as the reference.
- Cache: after the prefill each rank holds only its shard's K/V per layer (the two ranks' lengths add up to
  the prompt length L, each at most ceil(L / 4) * 2 rows); after one decode step only the owner rank holds
  the new tokens' K/V. Prefill and decode-step logits vs the full forward of the HF model: within 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from videos import write_video

import longrl.models as M
from longrl.data.schema import Example
from longrl.models.loading import load_model
from longrl.parallel.launch import run_local
from longrl.rollout import RolloutBatch, SamplingParams
from longrl.rollout.hf import HFEngine
from longrl.rollout.prompts import VideoSource, encode_videos, rollout_batch_for
from longrl.video.sampling import SamplingConfig

SP = 2
TIMEOUT_S = 240
ATOL = 1e-5
GREEDY = SamplingParams(n=2, max_new_tokens=12, greedy=True)
SAMPLED = SamplingParams(n=3, max_new_tokens=16, temperature=1.0, seed=5)
LENGTH_CAP = SamplingParams(n=2, max_new_tokens=5, temperature=1.0, seed=1, ignore_eos=True)
PREFILL_SETUPS = [("ring", "zigzag"), ("ulysses", "zigzag"), ("ring", "contiguous")]


def _video_batch(loaded, videos: list[Path]) -> RolloutBatch:
    """Two questions about the two videos (different prompt lengths), left-padded, from their embeddings."""
    source = VideoSource(SamplingConfig(num_frames=4), loaded.video_config)
    encoded = encode_videos(loaded.adapter, videos, source)
    examples = [
        Example("0", "What colour is at the bottom?", ["red", "green"], "A", "", "c", "video", videos[0],
                videos[0].name),
        Example("1", "Which bars are lit at the end, and in what order do they change?", [], "x", "", "c",
                "video", videos[1], videos[1].name),
    ]  # fmt: skip
    return rollout_batch_for(
        loaded.adapter, loaded.tokenizer, examples, [encoded.embeddings[v] for v in videos]
    )


def _text_batch(adapter) -> RolloutBatch:
    """Text-only prompts of 3 and 5 tokens, left-padded."""
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batch = RolloutBatch(ids, mask)
    batch.inputs = adapter.build_inputs(ids, mask, [], None)
    return batch


def _plain(results) -> list[tuple]:
    return [(r.prompt_index, r.sample_index, r.token_ids.tolist(), r.logprobs, r.finish_reason, r.text)
            for r in results]  # fmt: skip


def _cases(stop_id: int) -> dict[str, SamplingParams]:
    return {
        "sampled": SAMPLED,
        "stop": SamplingParams(n=3, max_new_tokens=16, temperature=1.0, seed=5, stop_token_ids=(stop_id,)),
        "length": LENGTH_CAP,
    }


def _prompt(batch: RolloutBatch, row: int):
    """Prompt `row` without padding: (inputs_embeds [1, L, H], position_ids [3, 1, L])."""
    real = batch.inputs.attention_mask[row].bool()
    return batch.inputs.inputs_embeds[row][real][None], batch.inputs.position_ids[:, row][:, real][:, None]


def _worker(folder: Path, videos: list[Path], stop_id: int, next_tokens: list[int]) -> dict:
    from longrl.parallel.groups import init_parallel
    from longrl.rollout.sp_engine import SPHFEngine

    state = init_parallel(SP)
    loaded = load_model(folder)
    adapter, tok = loaded.adapter, loaded.tokenizer
    batch = _video_batch(loaded, videos)
    out: dict = {}
    for attn, layout in PREFILL_SETUPS:
        engine = SPHFEngine(adapter, tok, state=state, attn=attn, layout=layout)
        out[("greedy", attn, layout)] = _plain(engine.generate(batch, GREEDY))
    engine = SPHFEngine(adapter, tok, state=state)
    for name, params in _cases(stop_id).items():
        out[name] = _plain(engine.generate(batch, params))
    out["short"] = _plain(engine.generate(_text_batch(adapter), GREEDY))

    # The cache: after the prefill of prompt 1, then after one decode step of two rows.
    embeds, positions = _prompt(batch, 1)
    with torch.no_grad():
        cache, logits = engine.prefill(embeds, positions)
        layers = len(adapter.decoder_layers)
        prompt_lengths = [cache.prompt_length(layer) for layer in range(layers)]
        position = positions.amax() + 1
        step_logits = engine.decode_step(
            cache, torch.tensor(next_tokens), position.view(1, 1, 1).expand(3, len(next_tokens), 1)
        )
    out["cache"] = {
        "rank": state.sp_rank,
        "prompt_lengths": prompt_lengths,
        "decoded_lengths": [cache.decoded_length(layer) for layer in range(layers)],
        "owner": cache.owns_decoded,
        "logits": logits,
        "step_logits": step_logits,
    }
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp_engine")
    videos = [write_video(root / "a.mp4", 12, 4), write_video(root / "b.mp4", 20, 8)]
    folder = M.make_tiny(root / "tiny")
    loaded = load_model(folder)
    batch = _video_batch(loaded, videos)
    assert batch.attention_mask.sum(1).unique().numel() == 2  # the prompts really differ in length
    greedy = HFEngine(loaded.adapter, loaded.tokenizer).generate(batch, GREEDY)
    sampled = HFEngine(loaded.adapter, loaded.tokenizer, prompt_batch_size=1).generate(batch, SAMPLED)
    # A stop token met mid-way: the first token from the 4th on of a sample that ran to the length cap.
    tokens = next(r.token_ids.tolist() for r in sampled if r.finish_reason == "length")
    stop_at = next(i for i in range(3, len(tokens)) if tokens[i] not in tokens[:i])
    stop_id = tokens[stop_at]
    next_tokens = [greedy[0].token_ids[0].item(), sampled[0].token_ids[0].item()]
    results = run_local(_worker, SP, folder, videos, stop_id, next_tokens, timeout_s=TIMEOUT_S)
    return loaded, batch, greedy, (stop_id, stop_at), next_tokens, results


def _assert_same(got: list[tuple], want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:3] == (w.prompt_index, w.sample_index, w.token_ids.tolist())
        assert (g[4], g[5]) == (w.finish_reason, w.text)
        torch.testing.assert_close(g[3], w.logprobs, atol=ATOL, rtol=0)


def test_greedy_equals_hf_engine_for_every_prefill_attention(setup):
    _, _, greedy, _, _, results = setup
    for rank_out in results:  # every rank returns the same results
        for attn, layout in PREFILL_SETUPS:
            _assert_same(rank_out[("greedy", attn, layout)], greedy)


def test_sampling_stop_and_length_equal_hf_engine(setup):
    loaded, batch, _, (stop_id, stop_at), _, results = setup
    reference = HFEngine(loaded.adapter, loaded.tokenizer, prompt_batch_size=1)
    for name, params in _cases(stop_id).items():
        want = reference.generate(batch, params)
        for rank_out in results:
            _assert_same(rank_out[name], want)
    sampled = [r[2] for r in results[0]["sampled"]]
    assert len({tuple(t) for t in sampled}) > 1  # really sampled: the n samples differ
    assert ("stop", stop_at + 1) in [(r[4], len(r[2])) for r in results[0]["stop"]]  # cut mid-way
    assert all(len(r[2]) == 5 and r[4] == "length" for r in results[0]["length"])


def test_prompts_shorter_than_the_shard_chunks(setup):
    loaded, _, _, _, _, results = setup
    want = HFEngine(loaded.adapter, loaded.tokenizer).generate(_text_batch(loaded.adapter), GREEDY)
    for rank_out in results:
        _assert_same(rank_out["short"], want)


@torch.no_grad()
def test_each_rank_caches_only_its_shard(setup):
    loaded, batch, _, _, next_tokens, results = setup
    adapter = loaded.adapter
    embeds, positions = _prompt(batch, 1)
    length = embeds.shape[1]
    caches = sorted((r["cache"] for r in results), key=lambda c: c["rank"])
    chunk = -(-length // (2 * SP))  # zigzag: two chunks per rank
    for c in caches:
        assert len(set(c["prompt_lengths"])) == 1 and 0 < c["prompt_lengths"][0] <= 2 * chunk < length
    assert sum(c["prompt_lengths"][0] for c in caches) == length  # every prompt token cached exactly once
    assert [c["owner"] for c in caches].count(True) == 1
    for c in caches:
        assert set(c["decoded_lengths"]) == ({1} if c["owner"] else {0})

    # Logits: prefill's last position and one decode step, vs the HF model's full forward.
    full = adapter.logits(embeds, positions, None)[0, -1]
    position = positions.amax() + 1
    rows = torch.cat([embeds.expand(2, -1, -1), adapter.embed_tokens(torch.tensor(next_tokens))[:, None]], 1)
    row_positions = torch.cat([positions.expand(3, 2, -1), position.view(1, 1, 1).expand(3, 2, 1)], 2)
    step = adapter.logits(rows, row_positions, None)[:, -1]
    for c in caches:
        torch.testing.assert_close(c["logits"][0], full, atol=ATOL, rtol=0)
        torch.testing.assert_close(c["step_logits"], step, atol=ATOL, rtol=0)
