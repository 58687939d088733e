"""The reference policy of the KL term, and per-token logprobs of a sequence batch (policy or reference).

Two kinds of reference, both scoring sequences through the same SP prefill as the policy:
- `Reference.frozen_copy(adapter)`: a deep copy of the initial policy with every parameter frozen. The vision
  tower is not copied but shared (RL keeps it frozen, and the reference never runs it anyway: video
  embeddings come from the cache).
- `Reference.load(folder, ...)`: the initial policy read back from its model folder (a resumed run's
  reference; the same weights as a frozen copy taken at the start); with `shard=state` FSDP-sharded over
  the dp ranks like the policy (`longrl.train.fsdp.shard_model(train=False)`: forward only).
- `Reference.lora_base(adapter)`: the policy's own model with its LoRA adapters disabled, i.e. the base
  weights (`longrl.train.lora.adapters_disabled`); no extra memory.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch

from longrl.models.base import ModelAdapter
from longrl.parallel.groups import ParallelState
from longrl.parallel.sp_prefill import sp_token_logprobs
from longrl.rl.sequences import SequenceBatch, model_inputs
from longrl.rollout.hf import eval_mode
from longrl.train.fsdp import forward_region, is_sharded, shard_model

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def sequence_logprobs(
    adapter: ModelAdapter,
    batch: SequenceBatch,
    state: ParallelState,
    *,
    temperature: float,
    attn: str = "ring",
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logprobs [N, L] float32 of batch.targets (0 where not scored), and entropy [N, L] with return_entropy.

    log_softmax(logits / temperature) as the engines report them, computed sequence-parallel over the sp
    group (every sp rank of the group gets the full result; a collective). Runs with or without grad; an
    FSDP-sharded model runs it as one region (`longrl.train.fsdp.forward_region`).
    """

    def score() -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        inputs = model_inputs(adapter, batch)
        targets = batch.targets.to(adapter.device)
        return sp_token_logprobs(
            adapter, inputs, targets, state, attn=attn, temperature=temperature, return_entropy=return_entropy
        )

    return forward_region(adapter.model, score)


class Reference:
    """A frozen policy that scores sequences: `ref.logprobs(batch, state, temperature=T)` -> [N, L]."""

    def __init__(
        self, adapter: ModelAdapter, context: Callable[[], AbstractContextManager] = contextlib.nullcontext
    ) -> None:
        self.adapter = adapter
        self.context = context  # entered around every forward (e.g. LoRA adapters disabled)

    @classmethod
    def frozen_copy(cls, adapter: ModelAdapter) -> Reference:
        """A deep copy of `adapter`'s model (vision tower shared), all parameters frozen, in eval mode.
        Not for an FSDP-sharded policy (FSDP modules cannot be copied): use `Reference.load`."""
        model = adapter.model
        if is_sharded(model):
            raise ValueError("an FSDP-sharded policy cannot be copied; use Reference.load(folder, shard=...)")
        tower = adapter.vision_tower
        if any(p.requires_grad for p in tower.parameters()):
            raise ValueError(
                "the reference shares the vision tower, which must be frozen (RL keeps it frozen)"
            )
        copied = copy.deepcopy(model, memo={id(tower): tower})
        copied.requires_grad_(False)
        copied.eval()
        ref = type(adapter)(copied)
        ref.processor_config = adapter.processor_config
        return cls(ref)

    @classmethod
    def load(
        cls,
        folder,
        *,
        dtype: str | torch.dtype,
        device: torch.device | str,
        shard: ParallelState | None = None,
        mesh: DeviceMesh | None = None,
    ) -> Reference:
        """The model saved in `folder` (e.g. the run's initial `--model`), frozen, in eval mode. What a resumed
        run needs: the reference is the INITIAL policy, which a checkpoint of the trained one no longer holds.
        shard: FSDP-shard it over this grid's dp ranks like the policy (forward only; a collective), on
        `mesh` (e.g. the policy's, `longrl.train.fsdp.mesh_of`; default: a new one)."""
        from longrl.models.loading import load_model

        adapter = load_model(folder, dtype=dtype, device=device).adapter
        adapter.model.requires_grad_(False)
        adapter.model.eval()
        if shard is not None:
            shard_model(adapter, shard, train=False, mesh=mesh)
        return cls(adapter)

    @classmethod
    def lora_base(cls, adapter: ModelAdapter) -> Reference:
        """The policy's model with its LoRA adapters disabled (the base weights), sharing all memory."""
        from longrl.train.lora import adapters_disabled

        return cls(adapter, lambda: adapters_disabled(adapter.model))

    @torch.no_grad()
    def logprobs(
        self, batch: SequenceBatch, state: ParallelState, *, temperature: float, attn: str = "ring"
    ) -> torch.Tensor:
        """[N, L] float32 logprobs of batch.targets under the reference (see `sequence_logprobs`)."""
        with self.context(), eval_mode(self.adapter.model):
            return sequence_logprobs(self.adapter, batch, state, temperature=temperature, attn=attn)
