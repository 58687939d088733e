"""MR-SP stage 1: encode a video's frames sharded over the sp ranks, gather the full embedding, cache it.

Qwen2.5-VL's vision attention never crosses temporal patches (window and full attention both run inside one
temporal patch's h*w patches), so a video of patch grid (t, h, w) can be cut along t: rank r encodes the
sub-grid (t_r, h, w) of its consecutive temporal patches and the concatenation over ranks, in rank order, is
the whole-video embedding. pixel_values_videos rows are time-major (h*w rows per temporal patch) and so are
the embeddings (h*w // merge**2 rows per temporal patch), which makes both cuts plain row slices.

The split is as even as possible; the extra temporal patches of uneven splits go to different ranks for
different videos of a batch, and a rank with no patches (t < sp) encodes nothing but still joins the gather.
Every rank of the group runs the same calls in the same order (same inputs), so collectives always match.

With the embedding store, every rank of an sp group looks the video up under the same key and the group
decides together (one all-reduce of hit flags): either every rank serves it from its store, or every rank
takes part in the sharded encode. A hit on one rank and a miss on another therefore cannot deadlock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from longrl.models.base import ModelAdapter
from longrl.models.embedding_store import EmbeddingStore, VideoEmbedding
from longrl.models.video_inputs import VideoPixels, encode_pixels


def split_temporal(grid_t: int, sp_size: int, offset: int = 0) -> list[int]:
    """Temporal patches per rank for a video of `grid_t` patches: as even as possible, in rank order.

    The `grid_t % sp_size` ranks that get one extra patch start at rank `offset` (mod sp_size), so a batch
    can rotate them over its videos. Counts may be 0 (grid_t < sp_size). Sum == grid_t.
    """
    base, extra = divmod(grid_t, sp_size)
    return [base + int((r - offset) % sp_size < extra) for r in range(sp_size)]


def _group_geometry(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class _GatherRows(torch.autograd.Function):
    """all_gather of [n_r, H] tensors with per-rank n_r known on every rank; returns them in rank order.

    Backward: the gathered rows feed a sharded computation (each rank's decoder shard uses some of them), so
    a rank's rows receive gradient from every rank: all-reduce the gradient (sum) and keep this rank's rows.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int], group: dist.ProcessGroup) -> torch.Tensor:
        rank = dist.get_rank(group)
        ctx.sizes, ctx.group, ctx.rank = sizes, group, rank
        longest = max(sizes)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        # Padding to the longest slice keeps this an ordinary all_gather (gloo has no uneven one).
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_rows(local: torch.Tensor, sizes: Sequence[int], group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenate every rank's `local` [sizes[r], ...] in rank order -> [sum(sizes), ...] on every rank.

    Differentiable (the backward sums the gradient over the group and keeps this rank's rows). group None
    (one rank) returns `local`.
    """
    if group is None or dist.get_world_size(group) == 1:
        return local
    return _GatherRows.apply(local, list(sizes), group)


def encode_videos_sharded(
    adapter: ModelAdapter,
    pixel_values_videos: torch.Tensor,
    video_grid_thw: torch.Tensor,
    group: dist.ProcessGroup | None,
) -> list[torch.Tensor]:
    """The vision embeddings of N videos, each split by temporal patch over the ranks of `group`.

    pixel_values_videos: [sum_i t_i*h_i*w_i, C*tp*p*p] (every video's patches, time-major, concatenated;
    the same on every rank); video_grid_thw: [N, 3] int64. Returns N tensors [t_i*h_i*w_i // merge**2, H]
    in the model dtype, identical on every rank and equal to `adapter.encode_video` of the whole batch
    (each rank runs the tower on ~1/sp of every video; one all_gather for the batch). A collective: every
    rank of `group` must call it with the same grids. group None or of size 1 encodes locally.
    """
    grids = [tuple(int(x) for x in g) for g in video_grid_thw.reshape(-1, 3).tolist()]
    if not grids:
        return []
    rank, sp = _group_geometry(group)
    if sp == 1:
        return adapter.encode_video(pixel_values_videos, video_grid_thw)
    merge2 = adapter.merge_size**2
    # counts[i][r]: temporal patches of video i on rank r (the extra ones rotate over the videos).
    counts, offset = [], 0
    for t, _, _ in grids:
        counts.append(split_temporal(t, sp, offset))
        offset = (offset + t % sp) % sp
    row_starts = [0]
    for t, h, w in grids:
        row_starts.append(row_starts[-1] + t * h * w)
    if pixel_values_videos.shape[0] != row_starts[-1]:
        raise ValueError(
            f"pixel_values_videos has {pixel_values_videos.shape[0]} rows but the grids {grids} need "
            f"{row_starts[-1]}"
        )

    pieces, sub_grids = [], []
    for i, (_, h, w) in enumerate(grids):
        t0, n = sum(counts[i][:rank]), counts[i][rank]
        if n:
            start = row_starts[i] + t0 * h * w
            pieces.append(pixel_values_videos[start : start + n * h * w])
            sub_grids.append((n, h, w))
    if pieces:
        grid = torch.tensor(sub_grids, dtype=torch.long)
        local = torch.cat(adapter.encode_video(torch.cat(pieces), grid))
    else:
        local = torch.zeros(0, adapter.hidden_size, dtype=adapter.dtype, device=adapter.device)
        # With a trainable tower the other ranks' gathers take part in autograd and their backward is a
        # collective: this rank must reach it too, so its empty slice joins the graph.
        local.requires_grad_(torch.is_grad_enabled() and adapter.vision_trainable)

    # Embedding rows per (rank, video), known everywhere from the grids: no size exchange needed.
    rows = [[counts[i][r] * h * w // merge2 for i, (_, h, w) in enumerate(grids)] for r in range(sp)]
    full = gather_rows(local, [sum(per_video) for per_video in rows], group)
    # `full` is rank-major (rank 0's slices of videos 0..N-1, then rank 1's, ...): reassemble each video.
    out: list[list[torch.Tensor]] = [[] for _ in grids]
    pos = 0
    for r in range(sp):
        for i, n in enumerate(rows[r]):
            out[i].append(full[pos : pos + n])
            pos += n
    return [torch.cat(parts) for parts in out]


def _all_ranks_agree(flags: list[bool], group: dist.ProcessGroup | None, device: torch.device) -> list[bool]:
    """Element-wise AND of `flags` over the group (one all-reduce)."""
    if group is None or dist.get_world_size(group) == 1 or not flags:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return [bool(x) for x in t.tolist()]


def get_or_encode_sharded(
    adapter: ModelAdapter,
    store: EmbeddingStore | None,
    key_parts: Sequence[Mapping[str, Any]],
    load: Callable[[int], VideoPixels],
    group: dist.ProcessGroup | None,
    *,
    device: torch.device | None = None,
) -> list[VideoEmbedding]:
    """The embeddings of N videos through the store, missing ones encoded with `encode_videos_sharded`.

    key_parts[i] is video i's cache key parts (e.g. `longrl.models.video_inputs.video_cache_parts`);
    load(i) preprocesses video i (called only for videos the group must encode, on every rank). Every rank
    of `group` must call this with the same keys in the same order. The group decides each video together:
    served from every rank's store only if every rank has it, else encoded by all (ranks that had it keep
    their entry; ranks that lacked it store the fresh one). With the tower trainable (store bypassed) every
    video is encoded, sharded, with its autograd graph. store None: always encode. `device` is where the
    hit flags are reduced (the group backend's device; default the model's).
    """
    n = len(key_parts)
    device = device or adapter.device
    bypass = store is None or not store.frozen
    local = [False] * n if bypass else [store.contains(parts) for parts in key_parts]
    shared = _all_ranks_agree(local, group, device)
    missing = [i for i in range(n) if not shared[i]]

    fresh: dict[int, VideoEmbedding] = {}
    if missing:
        videos = [load(i) for i in missing]
        pixels = torch.cat([v.pixel_values_videos.to(adapter.device) for v in videos])
        grid = torch.tensor([v.grid_thw for v in videos], dtype=torch.long)
        embeds = encode_videos_sharded(adapter, pixels, grid, group)
        for i, v, e in zip(missing, videos, embeds, strict=True):
            fresh[i] = VideoEmbedding(e, tuple(v.grid_thw), float(v.second_per_grid_t), tuple(v.timestamps))

    results = []
    for i, parts in enumerate(key_parts):
        if store is None:
            results.append(fresh[i])
        elif i in fresh:
            value = fresh[i]
            results.append(store.get_or_encode(parts, lambda value=value: value))
        else:
            # Every rank said it has the entry; if it vanished meanwhile (evicted, unreadable file) this
            # rank re-encodes it alone, without collectives, so the group cannot deadlock.
            results.append(store.get_or_encode(parts, lambda i=i: encode_pixels(adapter, load(i))))
    return results


def encode_video_file_sharded(
    adapter: ModelAdapter,
    store: EmbeddingStore | None,
    path: str | os.PathLike,
    sampling,
    video_config,
    group: dist.ProcessGroup | None,
    *,
    backend: str | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
    content_hash: bool = False,
    isolate: bool = True,
    device: torch.device | None = None,
) -> VideoEmbedding:
    """`longrl.models.video_inputs.encode_video_file` with the tower sharded over `group` (a collective).

    Same key, so sharded and single-process runs share cache entries (memory and disk tiers). On a miss every
    rank decodes and preprocesses the whole span, then encodes its temporal slice.
    """
    from longrl.models.video_inputs import load_video_file, video_cache_parts
    from longrl.video.decode import DEFAULT_BACKEND

    backend = backend or DEFAULT_BACKEND
    parts = video_cache_parts(
        adapter, path, sampling, video_config, backend=backend, start_s=start_s, end_s=end_s,
        content_hash=content_hash,
    )  # fmt: skip

    def load(_: int) -> VideoPixels:
        return load_video_file(
            adapter,
            path,
            sampling,
            video_config,
            backend=backend,
            start_s=start_s,
            end_s=end_s,
            isolate=isolate,
        )

    (emb,) = get_or_encode_sharded(adapter, store, [parts], load, group, device=device)
    return emb
