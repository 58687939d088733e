"""Decoding over a KV cache sharded along the sequence: flash-decoding across the sp ranks.

After a sequence-parallel prefill every sp rank keeps the K/V of ITS shard of the prompt only
(`ShardedKVCache`). A decode step then runs the new tokens' layers on every rank (replicated: one token per
sample is cheap), and each attention layer, through transformers' attention interface, does:

1. local partial attention of the new queries over this rank's keys: its prompt shard, stored once and
   shared by the n samples of the prompt (the samples' queries become the query rows of one block against
   it), plus, on the one rank that owns them, the keys of the tokens decoded so far, the new one included.
   Every key of the sequence is so seen by exactly one rank;
2. an all_gather of the partial (out, lse) pairs and their LSE merge (`longrl.ops.lse_merge_`) in rank
   order, so every rank ends with the same bits and the replicated layers stay identical across ranks.

Per step and layer that is one all_gather of n x heads x (head_dim + 1) floats, whatever the prompt length.

    cache = ShardedKVCache(keep=shard_index >= 0, owns_decoded=(sp_rank == 0))
    with sp_attention(adapter, group, "ring"), capture_prompt_kv(adapter, cache):
        hidden = adapter.forward(shard_embeds, shard_positions, None)     # fills cache.prompt_*
    with sp_decode_attention(adapter, cache, group):
        hidden = adapter.forward(token_embeds, positions, None)           # [n, 1, H], attends to everything

Both blocks switch the language model's `_attn_implementation` (the text config's, so the vision tower is
untouched) and set one process-wide active cache, like `sp_attention`: run one block at a time per process.
No HF cache object is involved (the model runs with past_key_values=None); the attention functions keep
the K/V themselves, by `module.layer_idx`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from longrl import ops
from longrl.parallel.sp_attention import sp_attention_forward

PREFILL_IMPLEMENTATION = "longrl_sp_prefill_kv"
DECODE_IMPLEMENTATION = "longrl_sp_decode"


@dataclass
class ShardedKVCache:
    """One rank's share of a sequence's K/V, per decoder layer (all tensors post-rotary, model dtype).

    keep: [Ls] bool, which rows of this rank's prefill shard are real tokens (False: `pad_and_shard`
    padding, never stored). owns_decoded: whether this rank keeps the decoded tokens' K/V (exactly one rank
    of the group must). prompt_keys / prompt_values[layer]: [1, Hkv, Lr, D], Lr = keep.sum() (the prompt
    is stored once, whatever the number of samples). decoded_keys / decoded_values[layer]: [N, Hkv, t, D]
    for the N rows still decoding (t tokens each), owner only.
    """

    keep: torch.Tensor
    owns_decoded: bool
    prompt_keys: dict[int, torch.Tensor] = field(default_factory=dict)
    prompt_values: dict[int, torch.Tensor] = field(default_factory=dict)
    decoded_keys: dict[int, torch.Tensor] = field(default_factory=dict)
    decoded_values: dict[int, torch.Tensor] = field(default_factory=dict)

    def store_prompt(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Keep the real rows of this rank's prefill K/V ([1, Hkv, Ls, D]), contiguous (each decode step
        reads them whole)."""
        if key.shape[0] != 1 or key.shape[2] != self.keep.shape[0]:
            raise RuntimeError(
                f"prefill K/V {tuple(key.shape)} do not match one prompt's shard of {self.keep.shape[0]} rows"
            )
        keep = self.keep.to(key.device)
        if bool(keep.all()):
            self.prompt_keys[layer], self.prompt_values[layer] = key.contiguous(), value.contiguous()
        else:
            self.prompt_keys[layer] = key[:, :, keep].contiguous()
            self.prompt_values[layer] = value[:, :, keep].contiguous()

    def append_decoded(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Add the new tokens' K/V ([N, Hkv, 1, D]) on the owner; other ranks drop them (counted once)."""
        if not self.owns_decoded:
            return
        if layer in self.decoded_keys:
            key = torch.cat([self.decoded_keys[layer], key], dim=2)
            value = torch.cat([self.decoded_values[layer], value], dim=2)
        self.decoded_keys[layer], self.decoded_values[layer] = key, value

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these decoding rows (int64 [N'] indices into the current N), e.g. drop finished ones."""
        for layer in self.decoded_keys:
            self.decoded_keys[layer] = self.decoded_keys[layer][rows]
            self.decoded_values[layer] = self.decoded_values[layer][rows]

    def prompt_length(self, layer: int = 0) -> int:
        """Prompt tokens whose K/V this rank holds for `layer`."""
        return int(self.prompt_keys[layer].shape[2]) if layer in self.prompt_keys else 0

    def decoded_length(self, layer: int = 0) -> int:
        """Decoded tokens whose K/V this rank holds for `layer` (0 on every rank but the owner)."""
        return int(self.decoded_keys[layer].shape[2]) if layer in self.decoded_keys else 0


def local_partial_attention(
    query: torch.Tensor, cache: ShardedKVCache, layer: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of new queries over this rank's keys only: (out float32 [N, H, 1, D], lse float32 [N, H, 1]).

    query: [N, H, 1, D] (one new token per row, post-rotary). Rows with no local key get out 0, lse -inf.
    """
    n, heads, one, dim = query.shape
    if one != 1:
        raise RuntimeError(f"sequence-parallel decoding takes one new token per row, got {one}")
    out = torch.zeros((n, heads, 1, dim), dtype=torch.float32, device=query.device)
    lse = torch.full((n, heads, 1), float("-inf"), dtype=torch.float32, device=query.device)
    if cache.prompt_length(layer):
        # The N samples share the prompt: their queries are the N query rows of one block against it.
        rows = query.transpose(0, 2).contiguous()  # [1, H, N, D]
        block_out, block_lse = ops.block_attention(
            rows, cache.prompt_keys[layer], cache.prompt_values[layer], mode="full", scale=scale
        )
        out.copy_(block_out.transpose(0, 2))
        lse.copy_(block_lse.transpose(0, 2))
    if cache.decoded_length(layer):
        block_out, block_lse = ops.block_attention(
            query, cache.decoded_keys[layer], cache.decoded_values[layer], mode="full", scale=scale
        )
        ops.lse_merge_(out, lse, block_out, block_lse)
    return out, lse


def merge_over_group(
    out: torch.Tensor, lse: torch.Tensor, group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's partial (out float32 [..., D], lse float32 [...]) merged into the attention over all
    their keys, identical on every rank (merged in rank order). group None or size 1: returned as is."""
    if group is None or dist.get_world_size(group) == 1:
        return out, lse
    dim = out.shape[-1]
    packed = torch.cat([out, lse.unsqueeze(-1)], dim=-1).contiguous()  # one collective for both
    parts = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, packed, group=group)
    merged = torch.zeros_like(out)
    merged_lse = torch.full_like(lse, float("-inf"))
    for part in parts:
        ops.lse_merge_(merged, merged_lse, part[..., :dim].contiguous(), part[..., dim].contiguous())
    return merged, merged_lse


# ---- the transformers attention-interface hooks ----------------------------------------------------------


@dataclass(frozen=True)
class _Active:
    cache: ShardedKVCache
    group: dist.ProcessGroup | None


_ACTIVE: _Active | None = None
_ACTIVE_LOCK = threading.Lock()


def _active(name: str) -> _Active:
    with _ACTIVE_LOCK:
        active = _ACTIVE
    if active is None:
        raise RuntimeError(f"{name} attention ran outside its `with` block (no sharded KV cache is active)")
    return active


def prefill_capture_forward(module, query, key, value, attention_mask, **kwargs):
    """The "longrl_sp_prefill_kv" attention: store this shard's K/V in the active cache, then run
    `sp_attention_forward` (ring or Ulysses, as the enclosing `sp_attention` block says)."""
    _active(PREFILL_IMPLEMENTATION).cache.store_prompt(module.layer_idx, key, value)
    return sp_attention_forward(module, query, key, value, attention_mask, **kwargs)


def decode_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The "longrl_sp_decode" attention: q [N, H, 1, D], k/v [N, Hkv, 1, D] of the new tokens ->
    ([N, 1, H, D] in q's dtype, None): attention over the whole sequence, sharded K/V + decoded tokens."""
    active = _active(DECODE_IMPLEMENTATION)
    if attention_mask is not None or dropout or sliding_window is not None:
        raise RuntimeError("sequence-parallel decoding takes no mask, dropout or sliding window")
    layer = module.layer_idx
    active.cache.append_decoded(layer, key, value)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out, lse = local_partial_attention(query, active.cache, layer, scale)
    out, _ = merge_over_group(out, lse, active.group)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _register(name: str, fn) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(name, fn)
    # Without a mask function transformers builds no mask for these implementations (see sp_attention).
    if name in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        raise RuntimeError(f"a mask function is registered for {name!r}; sharded decoding needs none")


@contextmanager
def _installed(adapter, name: str, fn, cache: ShardedKVCache, group) -> Iterator[None]:
    global _ACTIVE
    language_model = getattr(adapter, "language_model", None)
    if language_model is None:
        raise TypeError(f"{type(adapter).__name__} has no `language_model`; SP decoding cannot be installed")
    _register(name, fn)
    config = language_model.config
    previous_impl = config._attn_implementation
    with _ACTIVE_LOCK:
        previous, _ACTIVE = _ACTIVE, _Active(cache, group)
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous_impl
        with _ACTIVE_LOCK:
            _ACTIVE = previous


@contextmanager
def capture_prompt_kv(adapter, cache: ShardedKVCache) -> Iterator[None]:
    """Within the block, the sequence-parallel prefill also stores each layer's shard K/V in `cache`.
    Enter it INSIDE `sp_attention(adapter, group, mode, layout=...)`, which does the attention."""
    with _installed(adapter, PREFILL_IMPLEMENTATION, prefill_capture_forward, cache, None):
        yield


@contextmanager
def sp_decode_attention(adapter, cache: ShardedKVCache, group: dist.ProcessGroup | None) -> Iterator[None]:
    """Within the block, the language model's attention is `decode_attention_forward` over `cache` and the
    sp `group` (a collective per layer: every rank of the group runs the same forward)."""
    with _installed(adapter, DECODE_IMPLEMENTATION, decode_attention_forward, cache, group):
        yield
