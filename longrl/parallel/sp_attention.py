"""Sequence-parallel attention inside an unmodified HF model, through transformers' attention interface.

`sp_attention(adapter, group, mode)` is a context manager. Inside it the LANGUAGE model's attention layers
call `ring_attention` or `ulysses_attention` on this rank's shard instead of their usual kernel; outside it
the same model runs unsharded as before. The vision tower keeps its own attention: only the text config's
`_attn_implementation` is switched (Qwen2.5-VL's vision config is a separate object).

How it plugs in (transformers 5.23):
- `AttentionInterface.register("longrl_sp", fn)`: each `Qwen2_5_VLAttention.forward` looks the function up by
  `config._attn_implementation` on every call and passes q [B, H, Ls, D] and k/v [B, Hkv, Ls, D] AFTER
  rotary embedding. The rotary tables come from the position ids the decoder was given, i.e. the sharded
  3-D mrope positions, so the rotation is already the unsharded model's.
- Masks: `masking_utils.create_causal_mask` returns None early for any implementation that has no entry in
  `AttentionMaskInterface`, and "longrl_sp" deliberately has none. So no [Ls, Ls] mask of the shard (which
  would be wrong: causality runs over global, zigzag-permuted positions) is ever built; causality is the
  ring/Ulysses `causal=True`, and right padding sits at the end of the global sequence, where causal
  attention keeps it away from real rows.
- The group and mode are process-wide state (a lock-protected module global) for the duration of the
  `with` block, not a ContextVar: autograd runs backward, and so activation-checkpoint recomputation, on
  its own worker threads (one per CUDA device), which do not see the caller's context variables. With
  activation checkpointing the layers are recomputed during backward, so run backward inside the block
  too; a call outside any block raises instead of silently attending over the shard alone. Like the
  config's `_attn_implementation` switch, this is one setting per process: nested blocks restore the
  outer one on exit, but blocks entered concurrently from different threads would see each other's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from longrl.errors import ConfigError

ATTN_IMPLEMENTATION = "longrl_sp"
SP_ATTN_MODES = ("ring", "ulysses")
SP_ATTN_CHOICES = ("ring", "ulysses", "auto")


@dataclass(frozen=True)
class _ActiveSP:
    group: dist.ProcessGroup | None
    mode: str
    layout: str


# Visible to every thread of the process (autograd's backward threads included); see the module docstring.
_ACTIVE: _ActiveSP | None = None
_ACTIVE_LOCK = threading.Lock()


def _active() -> _ActiveSP | None:
    with _ACTIVE_LOCK:
        return _ACTIVE


def _swap_active(new: _ActiveSP | None) -> _ActiveSP | None:
    """Install `new` as the active SP config; returns the one it replaced."""
    global _ACTIVE
    with _ACTIVE_LOCK:
        previous, _ACTIVE = _ACTIVE, new
    return previous


def resolve_sp_attn(choice: str, num_heads: int, num_kv_heads: int, sp_size: int) -> str:
    """`--sp-attn` value -> "ring" or "ulysses".

    auto: Ulysses when sp divides both the query and the KV head counts, else ring. Head-sharded attention
    runs one full-length fused kernel per rank (no per-step launches, no LSE merging) and its all-to-all
    volume per rank shrinks as 1/sp, which wins on a node's fast links; ring works for any head count and
    never replicates KV heads, so it is the fallback (e.g. 28 heads with sp = 8, or sp > KV heads).
    Raises ConfigError for an unknown choice, or "ulysses" with sp not dividing the query heads.
    """
    if choice not in SP_ATTN_CHOICES:
        raise ConfigError(f"--sp-attn {choice}: choose one of {', '.join(SP_ATTN_CHOICES)}")
    if choice == "auto":
        return "ulysses" if num_heads % sp_size == 0 and num_kv_heads % sp_size == 0 else "ring"
    if choice == "ulysses" and num_heads % sp_size:
        raise ConfigError(
            f"--sp-attn ulysses needs the sp size ({sp_size}) to divide the {num_heads} attention heads; "
            "use --sp-attn ring"
        )
    return choice


def sp_attention_forward(
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
    """The registered "longrl_sp" attention: q [B, H, Ls, D], k/v [B, Hkv, Ls, D] -> ([B, Ls, H, D], None).

    Runs the active context's ring or Ulysses attention over the sp group (plain attention when the group is
    None). Raises RuntimeError outside `sp_attention(...)`, and for features the shard cannot honour: an
    explicit attention mask, attention dropout, sliding windows or a KV cache.
    """
    active = _active()
    if active is None:
        raise RuntimeError(
            "longrl_sp attention ran outside `sp_attention(...)`; with activation checkpointing, run the "
            "backward inside the same `with sp_attention(...)` block"
        )
    if attention_mask is not None:
        raise RuntimeError("longrl_sp attention takes no attention mask (right padding + causal attention)")
    if dropout:
        raise RuntimeError("longrl_sp attention does not support attention dropout")
    if sliding_window is not None:
        raise RuntimeError("longrl_sp attention does not support sliding-window layers")
    if key.shape[2] != query.shape[2]:
        raise RuntimeError("longrl_sp attention is for prefill only: q and k/v must cover the same shard")
    if active.mode == "ring":
        from longrl.parallel.ring_attention import ring_attention as attend
    else:
        from longrl.parallel.ulysses import ulysses_attention as attend
    causal = bool(getattr(module, "is_causal", True))
    out = attend(query, key, value, active.group, causal=causal, layout=active.layout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register "longrl_sp" with transformers' AttentionInterface (idempotent; no mask function on purpose)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(ATTN_IMPLEMENTATION, sp_attention_forward)
    # Mask creation must early-exit (return None) for this implementation; see the module docstring.
    if ATTN_IMPLEMENTATION in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        raise RuntimeError(
            f"a mask function is registered for {ATTN_IMPLEMENTATION!r}; SP attention needs transformers to "
            "build no mask for it (causality comes from ring/Ulysses attention over global positions)"
        )


def _text_config(adapter):
    language_model = getattr(adapter, "language_model", None)
    if language_model is None:
        raise TypeError(f"{type(adapter).__name__} has no `language_model`; SP attention cannot be installed")
    return language_model.config


@contextmanager
def sp_attention(
    adapter, group: dist.ProcessGroup | None, mode: str = "ring", *, layout: str = "zigzag"
) -> Iterator[None]:
    """Within the block, the adapter's language-model attention is sequence-parallel over `group`.

    mode: "ring" or "ulysses" (resolve "auto" first with `resolve_sp_attn`); layout: how the decoder's input
    was sharded ("zigzag" or "contiguous", as given to `longrl.ops.pad_and_shard`). Inputs fed to the model
    in the block must be this rank's shard, with position ids sharded alongside and attention_mask None.
    Nested blocks restore the outer one on exit. The setting is process-wide (seen by autograd's backward
    threads too), so run one block at a time per process.
    """
    if mode not in SP_ATTN_MODES:
        raise ValueError(f"sp attention mode must be one of {SP_ATTN_MODES}, got {mode!r}")
    register()
    config = _text_config(adapter)
    previous = config._attn_implementation
    outer = _swap_active(_ActiveSP(group, mode, layout))
    config._attn_implementation = ATTN_IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = previous
        _swap_active(outer)
