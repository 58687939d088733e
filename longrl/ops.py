"""The one public door to longrl's ops.

Every op here has a plain-torch reference next to its implementation (in `longrl/_ops/`), a compiled
C++/CUDA kernel in `longrl._C` and, where named, a Triton kernel in `longrl.kernels`. Each function takes
`backend=None` ("auto"): the best backend available for the tensors' device is used; naming one ("cpp",
"cuda", "triton", "aten", "torch") forces it or raises `longrl.errors.BackendError`. `backend_table()` says
what "auto" picks on each device (shown by `longrl doctor`).

Ops:
  pad_and_shard / unshard   fused padding + sequence-parallel sharding (contiguous or zigzag) and its inverse
  lse_merge / lse_merge_    merge a block's (out, lse) into a running ring-attention result, in fp32
  block_attention           one attention block returning (out, lse); block_attention_backward -> dq, dk, dv
  token_logprobs            per-token logprobs (+ entropy) from hidden states and lm_head, vocabulary-chunked
  token_logprobs_from_logits  the same from logits
  EmbeddingCache            paged device cache of vision embeddings (LRU, byte budget, host tier)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from longrl import _backend
from longrl._ops import attention as _attention
from longrl._ops import embedding_cache as _embedding_cache
from longrl._ops import logprobs as _logprobs
from longrl._ops import lse_merge as _lse_merge
from longrl._ops import pad_shard as _pad_shard
from longrl._ops.embedding_cache import EmbeddingCache, ReferenceEmbeddingCache
from longrl._ops.pad_shard import LAYOUTS, ShardSpec

__all__ = [
    "EmbeddingCache",
    "ReferenceEmbeddingCache",
    "ShardSpec",
    "LAYOUTS",
    "ATTENTION_MODES",
    "pad_and_shard",
    "unshard",
    "lse_merge",
    "lse_merge_",
    "block_attention",
    "block_attention_backward",
    "token_logprobs",
    "token_logprobs_from_logits",
    "backend_table",
]

# For each op: the backends "auto" tries on each device type, best first.
PREFERENCES: dict[str, dict[str, tuple[str, ...]]] = {
    "pad_and_shard": {"cpu": ("cpp", "torch"), "cuda": ("cuda", "torch")},
    "unshard": {"cpu": ("cpp", "torch"), "cuda": ("cuda", "torch")},
    "lse_merge": {"cpu": ("cpp", "triton", "torch"), "cuda": ("cuda", "triton", "torch")},
    "block_attention": _attention.PREFERENCES,
    "token_logprobs": {"cpu": ("torch", "triton"), "cuda": ("triton", "torch")},
    "embedding_cache": _embedding_cache.PREFERENCES,
}

ATTENTION_MODES = _attention.MODES


def _device_type(t: torch.Tensor) -> str:
    return "cuda" if t.is_cuda else "cpu"


def _pick(op: str, t: torch.Tensor, backend: str | None) -> str:
    return _backend.resolve(op, _device_type(t), PREFERENCES[op][_device_type(t)], backend)


def backend_table() -> dict[str, dict[str, str]]:
    """What backend="auto" picks for each op, per device type ({op: {"cpu": ..., "cuda": ...}}).

    A device type this process cannot use reports "unavailable".
    """
    table: dict[str, dict[str, str]] = {}
    for op, per_device in PREFERENCES.items():
        table[op] = {}
        for device_type, prefs in per_device.items():
            if device_type == "cuda" and not torch.cuda.is_available():
                table[op][device_type] = "unavailable (no CUDA device)"
                continue
            candidates = _backend.auto_candidates(device_type, prefs)
            choice = next((b for b in candidates if _backend.available(b, device_type)), "none")
            table[op][device_type] = choice
    return table


# ----------------------------------------------------------------------------------------------------------
# pad_and_shard / unshard
# ----------------------------------------------------------------------------------------------------------


def pad_and_shard(
    x: torch.Tensor,
    *,
    sp_size: int,
    rank: int,
    dim: int = 1,
    layout: str = "zigzag",
    pad_value: float | int | bool = 0,
    backend: str | None = None,
) -> tuple[torch.Tensor, ShardSpec]:
    """Pad `x` along `dim` and return this rank's sequence-parallel shard, in one pass.

    x: any dtype and layout (non-contiguous allowed), e.g. embeddings [B, L, H] (bf16/fp16/fp32, dim=1),
       position ids [3, B, L] or [B, L] int64 (dim=2 or 1), masks [B, L] bool, labels [B, L] int64.
    Layouts (`n` chunks, the padded length is the next multiple of `n`, pad value `pad_value`):
      "contiguous": n = sp_size; rank r holds chunk r.
      "zigzag":     n = 2 * sp_size; rank r holds chunks r and 2*sp_size-1-r, in that order (balances causal
                    attention work across ranks).
    Returns (shard, spec): shard has x's shape with `dim` of size spec.shard_length (= padded / sp_size),
    contiguous; `spec` is what `unshard` needs. Differentiable: the backward scatters the shard's gradient
    back into x's positions (zeros elsewhere). No padded full-size tensor is ever built.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"pad_and_shard: layout must be one of {LAYOUTS}, got {layout!r}")
    if sp_size < 1 or not 0 <= rank < sp_size:
        raise ValueError(f"pad_and_shard: need sp_size >= 1 and 0 <= rank < sp_size, got {sp_size=}, {rank=}")
    if x.dim() == 0:
        raise ValueError("pad_and_shard: x must have at least one dimension")
    dim = dim % x.dim()
    spec = ShardSpec.make(length=x.shape[dim], dim=dim, sp_size=sp_size, layout=layout)
    shard = _pad_shard.pad_and_shard(x, spec, rank, pad_value, _pick("pad_and_shard", x, backend))
    return shard, spec


def unshard(
    shards: torch.Tensor | Sequence[torch.Tensor], spec: ShardSpec, *, backend: str | None = None
) -> torch.Tensor:
    """Restore the original order (and drop the padding) from every rank's shard.

    shards: a list of sp_size shards in rank order (as from all_gather), each shaped like the output of
            `pad_and_shard` along spec.dim, or one tensor holding them concatenated along spec.dim in rank
            order (as from all_gather_into_tensor).
    Returns a contiguous tensor with spec.length along spec.dim, positions as in the original x.
    Differentiable: the backward shards the gradient back into each rank's slot.
    """
    if not isinstance(shards, torch.Tensor):
        shards = list(shards)
    pieces = [shards] if isinstance(shards, torch.Tensor) else shards
    if any(t.dim() <= spec.dim for t in pieces):
        raise ValueError(f"unshard: shards must have a dim {spec.dim} (the sharded dim of the spec)")
    if isinstance(shards, torch.Tensor):
        ref = shards
        if shards.shape[spec.dim] != spec.padded_length:
            raise ValueError(
                f"unshard: concatenated shards have {shards.shape[spec.dim]} along dim {spec.dim}, "
                f"expected {spec.padded_length}"
            )
    else:
        if len(shards) != spec.sp_size:
            raise ValueError(f"unshard: got {len(shards)} shards for sp_size={spec.sp_size}")
        ref = shards[0]
        for s in shards:
            if s.shape[spec.dim] != spec.shard_length:
                raise ValueError(
                    f"unshard: a shard has {s.shape[spec.dim]} along dim {spec.dim}, expected {spec.shard_length}"
                )
    return _pad_shard.unshard(shards, spec, _pick("unshard", ref, backend))


# ----------------------------------------------------------------------------------------------------------
# lse_merge
# ----------------------------------------------------------------------------------------------------------


def lse_merge_(
    out: torch.Tensor,
    lse: torch.Tensor,
    block_out: torch.Tensor,
    block_lse: torch.Tensor,
    *,
    backend: str | None = None,
) -> None:
    """In place: fold one attention block's result into the running (out, lse).

    out [..., D] float32 contiguous (updated), lse [...] float32 contiguous (updated),
    block_out [..., D] float32/float16/bfloat16, block_lse [...] float32, with out.shape[:-1] == lse.shape.
    Math (fp32, stable): lse' = max + log(exp(lse - max) + exp(block_lse - max)),
    out' = out * exp(lse - lse') + block_out * exp(block_lse - lse'). A row whose lse is -inf (no visible key
    so far) takes the block as it is; a block row with block_lse = -inf changes nothing. Rows with no visible
    key at all keep lse = -inf and their out as it was (initialise it to 0): never NaN.
    """
    _lse_merge.check_args(out, lse, block_out, block_lse)
    _lse_merge.lse_merge_(out, lse, block_out, block_lse, _pick("lse_merge", out, backend))


def lse_merge(
    out: torch.Tensor,
    lse: torch.Tensor,
    block_out: torch.Tensor,
    block_lse: torch.Tensor,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-place `lse_merge_`: returns the merged (out float32 [..., D], lse float32 [...])."""
    new_out = out.to(torch.float32, copy=True).contiguous()
    new_lse = lse.to(torch.float32, copy=True).contiguous()
    lse_merge_(new_out, new_lse, block_out, block_lse, backend=backend)
    return new_out, new_lse


# ----------------------------------------------------------------------------------------------------------
# block attention (the per-step compute of ring attention)
# ----------------------------------------------------------------------------------------------------------


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mode: str = "full",
    scale: float | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one query block against one key/value block, returning the LSE for merging.

    q [B, H, Lq, D], k and v [B, Hkv, Lk, D] (H divisible by Hkv: grouped-query attention), float32/16/bf16.
    Modes (the four cases of a zigzag ring):
      "full"          every query sees every key (non-causal; also a ring step of a non-causal model)
      "causal"        Lq == Lk at the same positions; query i sees keys 0..i
      "kv_first_half" every query sees the first Lk // 2 keys, non-causal (earlier rank's block in a zigzag ring)
      "q_second_half" the last Lq // 2 queries see every key, non-causal (later rank's block in a zigzag ring)
    Returns out [B, H, Lq', D] in q's dtype and lse [B, H, Lq'] float32 (natural log of the softmax
    denominator of the scaled scores), where Lq' = Lq // 2 for "q_second_half", else Lq.
    scale defaults to D ** -0.5. Not differentiable by autograd: use block_attention_backward.
    """
    _attention.check_args(q, k, v, mode)
    return _attention.forward(q, k, v, mode, scale, _pick("block_attention", q, backend))


def block_attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    mode: str = "full",
    scale: float | None = None,
    grad_dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of one block given the *merged* out and lse of the query rows (ring attention backward).

    dout, out [B, H, Lq', D] and lse [B, H, Lq'] float32 cover the rows `mode` computes (Lq' as in
    block_attention). With out/lse the final merged values, the result is this block's exact share of the
    full-attention gradient. Returns dq shaped like q (zero rows outside the mode's queries), dk and dv shaped
    like k and v (zero rows outside the mode's keys), accumulated in float32 and returned in `grad_dtype`:
    None (default) is q/k/v's dtype; torch.float32 returns the float32 sums unrounded (every backend computes
    them in float32 math then, no pass through fp16/bf16) — what a caller that adds several blocks' gradients
    (the ring backward) needs so each block is not rounded to fp16/bf16 before the sum.
    """
    _attention.check_args(q, k, v, mode)
    backend = _pick("block_attention", q, backend)
    return _attention.backward(dout, q, k, v, out, lse, mode, scale, backend, grad_dtype=grad_dtype)


# ----------------------------------------------------------------------------------------------------------
# fused token logprobs
# ----------------------------------------------------------------------------------------------------------


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    chunk_size: int = 4096,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) (and entropy) of logits = hidden @ weight.T (+ bias), divided by temperature.

    hidden [T, H] (or [B, L, H], flattened), weight [V, H], labels [T] (or [B, L]) int64/int32, bias [V] or
    None; fp32/fp16/bf16, math in float32. The [T, V] float32 log-softmax is never materialized: the
    vocabulary is processed in chunks of `chunk_size` with an online log-sum-exp. Returns logprobs float32
    shaped like labels (0 where label == ignore_index) and, with return_entropy, the entropy of each row's
    distribution (float32, same shape; 0 on ignored rows). Ignored rows get no gradient. Differentiable
    w.r.t. hidden, weight and bias (the backward recomputes the chunks). Labels outside [0, V) other than
    ignore_index raise ValueError (one check, a device sync on CUDA). A -inf bias entry (masked token) is
    allowed. Backends: "torch" computes each [rows, chunk] logits tile in the input dtype (as the model's
    lm_head would); "triton" (CUDA) multiplies in a fused kernel with float32 accumulation, so fp16/bf16
    results differ from "torch" by the rounding of the logits. chunk_size bounds the torch path's tiles and
    the Triton backward's d(logits) blocks. float64 inputs (torch backend only) compute and return float64.
    """
    _logprobs.check_args(hidden, weight, labels, bias)
    return _logprobs.token_logprobs(
        hidden, weight, labels, bias, temperature, return_entropy, ignore_index, chunk_size,
        _pick("token_logprobs", hidden, backend),
    )  # fmt: skip


def token_logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    chunk_size: int = 4096,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) (and entropy) from logits [T, V] (or [B, L, V]) without a float32 copy of them.

    Same outputs and gradient (w.r.t. logits, returned in the logits' dtype) as `token_logprobs`; only one
    [rows, chunk] tile at a time is converted to float32.
    """
    _logprobs.check_logits_args(logits, labels)
    return _logprobs.token_logprobs_from_logits(
        logits, labels, temperature, return_entropy, ignore_index, chunk_size,
        _pick("token_logprobs", logits, backend),
    )  # fmt: skip
