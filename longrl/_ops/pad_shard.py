"""pad_and_shard / unshard: fused padding + sequence-parallel sharding and its inverse. See longrl.ops.

Geometry (one sequence dim of length L, `sp` ranks):
  the sequence is padded at its end to `padded_length` P (a multiple of the chunk count n) and cut into n
  chunks of C = P / n positions. "contiguous": n = sp, rank r holds chunk r. "zigzag": n = 2 * sp, rank r holds
  chunks r and 2*sp-1-r, in that order. A rank's shard is its chunks concatenated: S = P / sp positions.

Implementations (all produce bit-identical results; data movement only):
  "cpp" / "cuda"  torch.ops.longrl.* from longrl._C (csrc/cpu/pad_shard.cpp, csrc/cuda/pad_shard.cu): the
                  output is allocated once and every position written exactly once (copy or pad fill).
  "torch"         the same plan in plain torch (narrow + copy_ per chunk, fill_ for the padding); the fallback
                  when the extension is missing, and it works on any device.
  reference_*     the obvious, independent way (F.pad to full length, chunk, cat): the test oracle. It builds
                  the padded full-size tensor the kernels avoid.
Differentiability lives in the autograd.Functions below, shared by all backends: pad_and_shard's backward
scatters the shard's gradient to its positions (zeros elsewhere, `scatter_shard`); unshard's backward shards the
gradient again (`shard_all`: every rank's shard in one pass). Each backward is itself differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longrl import _backend  # noqa: F401  (imports longrl._C, which registers torch.ops.longrl.*)

LAYOUTS = ("contiguous", "zigzag")
_LAYOUT_CODE = {"contiguous": 0, "zigzag": 1}


@dataclass(frozen=True)
class ShardSpec:
    """How a sequence dim was padded and sharded; everything `unshard` needs to restore it.

    length:        original length L along `dim`.
    padded_length: P >= L, a multiple of `n_chunks`; positions L..P-1 are padding (at the end).
    dim:           the sequence dim (non-negative).
    sp_size:       number of sequence-parallel ranks.
    layout:        "contiguous" or "zigzag" (see the module docstring).
    `make` picks the smallest P; a spec built directly may carry more padding, which every backend honours.
    L = 0 is allowed and gives P = 0 (empty shards), so empty batches need no special case.
    """

    length: int
    padded_length: int
    dim: int
    sp_size: int
    layout: str

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"ShardSpec: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.sp_size < 1:
            raise ValueError(f"ShardSpec: sp_size must be >= 1, got {self.sp_size}")
        if self.dim < 0:
            raise ValueError(f"ShardSpec: dim must be non-negative (normalize it first), got {self.dim}")
        if self.length < 0 or self.padded_length < self.length or self.padded_length % self.n_chunks:
            raise ValueError(
                f"ShardSpec: need 0 <= length <= padded_length with padded_length a multiple of "
                f"{self.n_chunks}, got length={self.length}, padded_length={self.padded_length}"
            )

    @classmethod
    def make(cls, length: int, dim: int, sp_size: int, layout: str) -> ShardSpec:
        """Spec with the least padding: P = L rounded up to a multiple of n_chunks (L=3, sp=4 zigzag -> 8)."""
        n = sp_size * (2 if layout == "zigzag" else 1)
        padded = -(-length // n) * n if n > 0 else length
        return cls(length=length, padded_length=padded, dim=dim, sp_size=sp_size, layout=layout)

    @property
    def n_chunks(self) -> int:
        """Chunks the padded sequence is cut into: sp_size (contiguous) or 2 * sp_size (zigzag)."""
        return self.sp_size * self.chunks_per_rank

    @property
    def chunks_per_rank(self) -> int:
        """1 (contiguous) or 2 (zigzag)."""
        return 2 if self.layout == "zigzag" else 1

    @property
    def chunk_length(self) -> int:
        """Positions per chunk, C = padded_length / n_chunks."""
        return self.padded_length // self.n_chunks

    @property
    def shard_length(self) -> int:
        """Positions per rank's shard, S = padded_length / sp_size."""
        return self.padded_length // self.sp_size

    @property
    def pad(self) -> int:
        """Padding positions added at the end, P - L."""
        return self.padded_length - self.length

    @property
    def layout_code(self) -> int:
        """The layout as the compiled ops take it (0 contiguous, 1 zigzag)."""
        return _LAYOUT_CODE[self.layout]

    def chunks(self, rank: int) -> tuple[int, ...]:
        """The chunk indices rank `rank` holds, in shard order."""
        self.check_rank(rank)
        if self.layout == "zigzag":
            return (rank, 2 * self.sp_size - 1 - rank)
        return (rank,)

    def owner(self, chunk: int) -> tuple[int, int]:
        """(rank, slot within that rank's shard) holding chunk `chunk`."""
        if self.layout == "zigzag" and chunk >= self.sp_size:
            return 2 * self.sp_size - 1 - chunk, 1
        return chunk, 0

    def positions(self, rank: int) -> torch.Tensor:
        """Original indices of the shard's positions, in order: int64 [shard_length]; values >= length are padding."""
        c = self.chunk_length
        return torch.cat([torch.arange(k * c, (k + 1) * c, dtype=torch.int64) for k in self.chunks(rank)])

    def check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.sp_size:
            raise ValueError(f"pad_and_shard: rank must be in [0, {self.sp_size}), got {rank}")


# ----------------------------------------------------------------------------------------------------------
# Argument checks shared by every backend
# ----------------------------------------------------------------------------------------------------------


def _check_input(x: torch.Tensor, spec: ShardSpec, what: str) -> None:
    if x.dim() <= spec.dim:
        raise ValueError(f"{what}: tensor with {x.dim()} dims has no dim {spec.dim}")
    if x.shape[spec.dim] != spec.length:
        raise ValueError(
            f"{what}: tensor has {x.shape[spec.dim]} along dim {spec.dim}, spec says {spec.length}"
        )


def _check_pad_value(x: torch.Tensor, pad_value: float | int | bool) -> None:
    # fill_ would silently truncate a fractional pad for an integer tensor, or turn any non-zero pad into
    # True for a bool one: refuse both (out-of-range integers are refused by fill_ itself).
    if x.dtype == torch.bool:
        ok = isinstance(pad_value, bool) or pad_value in (0, 1)
    elif not (x.is_floating_point() or x.is_complex()) and isinstance(pad_value, float):
        ok = pad_value.is_integer()
    else:
        ok = True
    if not ok:
        raise ValueError(f"pad_and_shard: pad_value {pad_value} does not fit dtype {x.dtype}")


def _shards_as_list(shards: torch.Tensor | Sequence[torch.Tensor], spec: ShardSpec) -> list[torch.Tensor]:
    """One tensor per rank: a concatenated tensor is split into views (no copy)."""
    if isinstance(shards, torch.Tensor):
        return (
            list(shards.split(spec.shard_length, dim=spec.dim))
            if spec.shard_length
            else [shards] * spec.sp_size
        )
    return list(shards)


def _check_shards(shards: list[torch.Tensor], spec: ShardSpec) -> None:
    if len(shards) != spec.sp_size:
        raise ValueError(f"unshard: got {len(shards)} shards for sp_size={spec.sp_size}")
    first = shards[0]
    for s in shards:
        if s.dim() <= spec.dim or s.shape[spec.dim] != spec.shard_length:
            raise ValueError(f"unshard: every shard needs {spec.shard_length} positions along dim {spec.dim}")
        if s.shape != first.shape or s.dtype != first.dtype or s.device != first.device:
            raise ValueError("unshard: shards must share shape, dtype and device")


# ----------------------------------------------------------------------------------------------------------
# The copy plan, in plain torch ("torch" backend). A unit copies `rows` positions from a source and then
# fills `fill` positions with the pad value; units never overlap in the output.
# ----------------------------------------------------------------------------------------------------------


def _shard_units(spec: ShardSpec, ranks: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(out_start, src_start, rows, fill) along dim for the shards of `ranks`, concatenated in that order."""
    c, units = spec.chunk_length, []
    for i, r in enumerate(ranks):
        for slot, chunk in enumerate(spec.chunks(r)):
            rows = min(max(spec.length - chunk * c, 0), c)
            units.append(((i * spec.chunks_per_rank + slot) * c, chunk * c, rows, c - rows))
    return units


def _torch_shard_into(
    out: torch.Tensor, x: torch.Tensor, spec: ShardSpec, ranks: Sequence[int], pad_value: float | int | bool
) -> torch.Tensor:
    d = spec.dim
    for out_start, src_start, rows, fill in _shard_units(spec, ranks):
        if rows:
            out.narrow(d, out_start, rows).copy_(x.narrow(d, src_start, rows))
        if fill:
            out.narrow(d, out_start + rows, fill).fill_(pad_value)
    return out


def _torch_unshard_into(
    out: torch.Tensor, shards: list[torch.Tensor | None], spec: ShardSpec, fill_value: float | int | bool = 0
) -> torch.Tensor:
    """Chunk by chunk in original order; a None shard's chunks are filled with `fill_value`."""
    d, c = spec.dim, spec.chunk_length
    for chunk in range(spec.n_chunks):
        rows = min(max(spec.length - chunk * c, 0), c)
        if rows == 0:
            break
        rank, slot = spec.owner(chunk)
        dst = out.narrow(d, chunk * c, rows)
        src = shards[rank]
        if src is None:
            dst.fill_(fill_value)
        else:
            dst.copy_(src.narrow(d, slot * c, rows))
    return out


# ----------------------------------------------------------------------------------------------------------
# Out-variants: one per kernel, for every backend. The public functions allocate with torch.empty and call
# these; tests poison `out` to prove every position is written.
# ----------------------------------------------------------------------------------------------------------


def _out_shape(t: torch.Tensor, dim: int, size: int) -> list[int]:
    shape = list(t.shape)
    shape[dim] = size
    return shape


def shard_into(
    out: torch.Tensor,
    x: torch.Tensor,
    spec: ShardSpec,
    rank: int | None,
    pad_value: float | int | bool,
    backend: str,
) -> torch.Tensor:
    """Write rank `rank`'s shard of x into `out` (contiguous, x's shape with shard_length along dim).

    rank=None writes every rank's shard concatenated in rank order (padded_length along dim), which is what
    an all_gather_into_tensor of the shards holds: the backward of unshard.
    """
    if backend in ("cpp", "cuda"):
        ops = torch.ops.longrl
        if rank is None:
            ops.shard_all.out(
                x, spec.dim, spec.padded_length, spec.sp_size, spec.layout_code, pad_value, out=out
            )
        else:
            ops.pad_and_shard.out(
                x, spec.dim, spec.padded_length, spec.sp_size, rank, spec.layout_code, pad_value, out=out
            )
        return out
    ranks = range(spec.sp_size) if rank is None else [rank]
    return _torch_shard_into(out, x, spec, ranks, pad_value)


def unshard_into(
    out: torch.Tensor, shards: torch.Tensor | Sequence[torch.Tensor], spec: ShardSpec, backend: str
) -> torch.Tensor:
    """Write the original order (length along dim) into `out` from all shards (list, or concatenated tensor)."""
    if backend in ("cpp", "cuda"):
        as_list = [shards] if isinstance(shards, torch.Tensor) else list(shards)
        torch.ops.longrl.unshard.out(as_list, spec.dim, spec.length, spec.sp_size, spec.layout_code, out=out)
        return out
    return _torch_unshard_into(out, _shards_as_list(shards, spec), spec)


def scatter_into(
    out: torch.Tensor, shard: torch.Tensor, spec: ShardSpec, rank: int, backend: str
) -> torch.Tensor:
    """Place one rank's shard at its original positions in `out` (length along dim), zeros elsewhere.

    The backward of pad_and_shard (the shard's padding positions are dropped).
    """
    if backend in ("cpp", "cuda"):
        torch.ops.longrl.scatter_shard.out(
            shard, spec.dim, spec.length, spec.sp_size, rank, spec.layout_code, out=out
        )
        return out
    shards: list[torch.Tensor | None] = [None] * spec.sp_size
    shards[rank] = shard
    return _torch_unshard_into(out, shards, spec, fill_value=0)


def _new_shard(x: torch.Tensor, spec: ShardSpec, rank: int | None, pad_value, backend: str) -> torch.Tensor:
    size = spec.padded_length if rank is None else spec.shard_length
    out = torch.empty(_out_shape(x, spec.dim, size), dtype=x.dtype, device=x.device)
    return shard_into(out, x, spec, rank, pad_value, backend)


def _new_unshard(shards: list[torch.Tensor], spec: ShardSpec, backend: str) -> torch.Tensor:
    out = torch.empty(
        _out_shape(shards[0], spec.dim, spec.length), dtype=shards[0].dtype, device=shards[0].device
    )
    return unshard_into(out, shards[0] if len(shards) == 1 else shards, spec, backend)


def _new_scatter(shard: torch.Tensor, spec: ShardSpec, rank: int, backend: str) -> torch.Tensor:
    out = torch.empty(_out_shape(shard, spec.dim, spec.length), dtype=shard.dtype, device=shard.device)
    return scatter_into(out, shard, spec, rank, backend)


# ----------------------------------------------------------------------------------------------------------
# Autograd. Every op here is linear, so each backward is another op of this file (double backward works).
# ----------------------------------------------------------------------------------------------------------


class _PadAndShard(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec, rank, pad_value, backend):
        ctx.spec, ctx.rank, ctx.backend = spec, rank, backend
        return _new_shard(x, spec, rank, pad_value, backend)

    @staticmethod
    def backward(ctx, grad):
        return _ScatterShard.apply(grad, ctx.spec, ctx.rank, ctx.backend), None, None, None, None


class _ScatterShard(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shard, spec, rank, backend):
        ctx.spec, ctx.rank, ctx.backend = spec, rank, backend
        return _new_scatter(shard, spec, rank, backend)

    @staticmethod
    def backward(ctx, grad):
        return _PadAndShard.apply(grad, ctx.spec, ctx.rank, 0, ctx.backend), None, None, None


class _ShardAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec, backend):
        ctx.spec, ctx.backend = spec, backend
        return _new_shard(x, spec, None, 0, backend)

    @staticmethod
    def backward(ctx, grad):
        return _Unshard.apply(ctx.spec, ctx.backend, grad), None, None


class _Unshard(torch.autograd.Function):
    """Inputs: spec, backend, then either sp_size shards or one concatenated tensor."""

    @staticmethod
    def forward(ctx, spec, backend, *shards):
        ctx.spec, ctx.backend, ctx.n_inputs = spec, backend, len(shards)
        return _new_unshard(list(shards), spec, backend)

    @staticmethod
    def backward(ctx, grad):
        spec = ctx.spec
        everything = _ShardAll.apply(grad, spec, ctx.backend)  # [.., padded_length, ..] in rank order
        if ctx.n_inputs == 1:
            return None, None, everything
        return (None, None, *everything.split(spec.shard_length, dim=spec.dim))


def _needs_graph(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------------------------------------
# Entry points used by longrl.ops
# ----------------------------------------------------------------------------------------------------------


def pad_and_shard(
    x: torch.Tensor, spec: ShardSpec, rank: int, pad_value: float | int | bool, backend: str
) -> torch.Tensor:
    """Rank `rank`'s padded shard of x: x's shape with spec.shard_length along spec.dim, contiguous."""
    _check_input(x, spec, "pad_and_shard")
    spec.check_rank(rank)
    _check_pad_value(x, pad_value)
    if _needs_graph(x):
        return _PadAndShard.apply(x, spec, rank, pad_value, backend)
    return _new_shard(x, spec, rank, pad_value, backend)


def unshard(shards: torch.Tensor | Sequence[torch.Tensor], spec: ShardSpec, backend: str) -> torch.Tensor:
    """x in its original order (spec.length along spec.dim, contiguous) from every rank's shard.

    shards: sp_size tensors in rank order, or one tensor with them concatenated along spec.dim.
    """
    inputs = [shards] if isinstance(shards, torch.Tensor) else list(shards)
    if len(inputs) == 1 and inputs[0].dim() > spec.dim and inputs[0].shape[spec.dim] == spec.padded_length:
        _check_shards(_shards_as_list(inputs[0], spec), spec)
    else:
        _check_shards(inputs, spec)
    if _needs_graph(*inputs):
        return _Unshard.apply(spec, backend, *inputs)
    return _new_unshard(inputs, spec, backend)


# ----------------------------------------------------------------------------------------------------------
# Test oracle: the obvious way, independent of the plan above (pads the full tensor, then chunks).
# ----------------------------------------------------------------------------------------------------------


def _reference_chunk_order(sp_size: int, layout: str) -> list[int]:
    """Chunk indices in the order the ranks' shards hold them, rank 0 first."""
    if layout == "zigzag":
        return [c for r in range(sp_size) for c in (r, 2 * sp_size - 1 - r)]
    return list(range(sp_size))


def reference_pad_and_shard(
    x: torch.Tensor, sp_size: int, rank: int, dim: int, layout: str, pad_value: float | int | bool
) -> torch.Tensor:
    """F.pad x along dim to a multiple of the chunk count, chunk it, concatenate the rank's chunks."""
    dim = dim % x.dim()
    n = sp_size * (2 if layout == "zigzag" else 1)
    length = x.shape[dim]
    pad = (-length) % n
    # F.pad's pad tuple runs from the last dim backwards: (0, 0) for every dim after `dim`, then (0, pad).
    padded = F.pad(x, [0, 0] * (x.dim() - 1 - dim) + [0, pad], value=pad_value)
    chunks = padded.chunk(n, dim=dim) if padded.shape[dim] else [padded] * n
    per_rank = len(_reference_chunk_order(1, layout))
    mine = _reference_chunk_order(sp_size, layout)[rank * per_rank : (rank + 1) * per_rank]
    return torch.cat([chunks[c] for c in mine], dim=dim)


def reference_unshard(
    shards: Sequence[torch.Tensor], length: int, sp_size: int, dim: int, layout: str
) -> torch.Tensor:
    """Concatenate all shards, put the chunks back in order, drop the padding."""
    n = sp_size * (2 if layout == "zigzag" else 1)
    full = torch.cat(list(shards), dim=dim)
    pieces = full.chunk(n, dim=dim) if full.shape[dim] else [full] * n
    order = _reference_chunk_order(sp_size, layout)
    restored = torch.cat([pieces[order.index(c)] for c in range(n)], dim=dim)
    return restored.narrow(dim, 0, length)
