"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the policy and the reference model, over the dp ranks.

    use = resolve_fsdp(cfg.parallel.fsdp, state, device)      # "auto": on with CUDA and dp > 1
    shard_model(adapter, state)                                # the policy, before its optimizer is built
    logp = forward_region(model, lambda: ...)                  # every forward that trains or scores
    with gathered(model, everything=True): engine.generate()   # rollouts: full weights, no per-forward comms

What is sharded, and how (the HF model's own modules; nothing is copied or renamed, so state-dict names and
checkpoints are those of the plain model):
- each decoder layer is one FSDP unit: its parameters live as 1/dp shards (dim 0) and are all-gathered for
  the layer's forward and again in backward, then freed; its gradients are reduce-scattered to the shards;
- the root unit (the whole HF model) holds what the decoder layers do not: the token embeddings, the final
  norm and the LM head. They are used outside any module's forward (`build_inputs` embeds the tokens, the
  fused logprob op takes `lm_head.weight`), so callers run that code inside `forward_region`, which is
  registered as a forward method of the root (`register_fsdp_forward_method`): FSDP gathers the root's
  parameters for the region, keeps them through backward and reduce-scatters their gradients after it;
- the vision tower is left out of FSDP (`ignored_params`): it stays a full copy on every rank, because MR-SP
  encodes different numbers of videos on different ranks (cache hits, failed videos), which per-forward
  all-gathers cannot follow. When it trains (SFT with model.train_vision) its gradients are summed by
  `sync_gradients` as before. The frozen reference never runs its tower (embeddings come from the cache),
  so there the tower is one more unit that is never gathered (1/dp of it per rank).
With sp > 1 the mesh is 2-D (HSDP): shards over the dp ranks, replicas over the sp ranks of a replica
(consecutive global ranks, `longrl.parallel.groups`), so a gradient is reduce-scattered over dp and then
all-reduced over sp. Every reduction is a plain SUM (divide factor 1, sum-only comms): the trainers
normalise the loss by the step's global token count, exactly as `sync_gradients` (a world all-reduce SUM)
did without FSDP, which then skips the DTensor gradients FSDP already reduced.

Memory per rank, for P language-model parameters (V x H embeddings and LM head included), B bytes each
(4 with the float32 master weights of model.dtype "auto"): P*B/dp parameters + P*B/dp gradients + 2*P*4/dp
AdamW moments; plus the full vision tower (replicated); plus, transiently, the gathered layers of one
forward/backward (one or two decoder layers) and the root (embeddings, norm, LM head) while a region or
its backward runs; during HF-engine rollouts the whole policy is gathered (see `gathered`). With a GPU and
a float32 or bfloat16 model the gathers run in bfloat16 and gradients are reduced in float32
(`MixedPrecisionPolicy`); CPU runs (gloo, the tests) stay float32 end to end. For example Qwen2.5-VL-7B
(P ≈ 7.6e9 with 2 x 0.55e9 embeddings + LM head, vision tower ≈ 0.67e9) with float32 masters on dp = 8:
≈ 16 B * 7.6e9 / 8 ≈ 15 GB of shards, gradients and moments, + 2.7 GB frozen tower, + ≈ 2.2 GB bf16 root
during regions; the frozen reference adds 4 B * 8.3e9 / 8 ≈ 4 GB; HF-engine rollouts gather ≈ 15 GB bf16.

Collectives: every forward of a sharded unit all-gathers over dp, so every dp rank must run the same
number of forwards (and backwards) of the policy; trainers pad with zero-loss forwards where dp ranks hold
different numbers of micro-batches (`longrl.rl.step`). Rollouts are the exception, handled by `gathered`.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from longrl.errors import ConfigError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from longrl.models.base import ModelAdapter
    from longrl.parallel.groups import ParallelState

T = TypeVar("T")

# The root's forward method the trainers' forward code runs under (see `forward_region`).
_REGION = "_longrl_fsdp_region"
_GATHERED = "_longrl_fsdp_gathered"  # set on the root while `gathered` holds the weights


def resolve_fsdp(setting: bool | str, state: ParallelState, device: torch.device) -> bool:
    """parallel.fsdp ("auto", True, False) -> whether this run shards its models.

    "auto": on with CUDA and dp > 1. True needs several processes (ConfigError otherwise).
    """
    if setting == "auto":
        return device.type == "cuda" and state.dp_size > 1
    if setting is True and not state.distributed:
        raise ConfigError(
            "parallel.fsdp true needs several processes to shard over (--nproc N); use --no-fsdp or --nproc"
        )
    return bool(setting)


def is_sharded(model: nn.Module) -> bool:
    """True when `shard_model` has wrapped `model` (its root is an FSDP unit)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def is_dtensor(tensor: torch.Tensor | None) -> bool:
    """True for a DTensor (an FSDP-sharded parameter or its gradient)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def make_mesh(state: ParallelState) -> DeviceMesh:
    """The FSDP device mesh of the dp x sp grid: 1-D over dp when sp = 1, else 2-D (sp replicas, dp shards).

    A collective (the mesh creates its own process groups): every rank calls it, in the same order.
    """
    from torch.distributed.device_mesh import DeviceMesh

    # Global rank of (dp rank d, sp rank s) is d * sp + s (longrl.parallel.groups).
    ranks = torch.arange(state.world_size).reshape(state.dp_size, state.sp_size)
    device_type = state.device.type
    if state.sp_size == 1:
        return DeviceMesh(device_type, ranks.reshape(-1), mesh_dim_names=("dp",))
    # HSDP: dim 0 replicates (each sp rank of a replica holds the same shard), dim 1 shards over dp.
    return DeviceMesh(device_type, ranks.t().contiguous(), mesh_dim_names=("sp", "dp"))


def mesh_of(model: nn.Module) -> DeviceMesh:
    """The device mesh a sharded model's parameters live on."""
    for param in model.parameters():
        if is_dtensor(param):
            return param.device_mesh
    raise ValueError("the model has no FSDP-sharded parameters")


def mixed_precision(device: torch.device, dtype: torch.dtype) -> Any:
    """bf16 gathers with fp32 gradient reduction on a GPU for float32 / bfloat16 models; none on the CPU."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and dtype in (torch.float32, torch.bfloat16):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(
    adapter: ModelAdapter, state: ParallelState, *, train: bool = True, mesh: DeviceMesh | None = None
) -> None:
    """Shard `adapter.model` in place over the dp ranks (see the module docstring); a collective.

    train: the policy (vision tower replicated, gradients summed); False: a frozen, forward-only model
    (the reference; its never-run vision tower is sharded too). mesh: default `make_mesh(state)`. Call it
    after LoRA and activation checkpointing are applied and before an optimizer is built over the
    parameters (they become DTensors).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    if not state.distributed:
        raise ValueError("FSDP needs a process group (several processes)")
    model = adapter.model
    if is_sharded(model):
        raise ValueError("the model is already sharded")
    mesh = mesh if mesh is not None else make_mesh(state)
    policy = mixed_precision(adapter.device, adapter.dtype)
    tower = adapter.vision_tower
    ignored: set[nn.Parameter] | None = set(tower.parameters()) if train else None
    if not train:
        fully_shard(tower, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    for layer in adapter.decoder_layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    # The root keeps its parameters gathered from a region's forward through its backward (the embeddings
    # and the LM head are needed again there); `forward_region` frees them after no-grad regions.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False, ignored_params=ignored)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
            # Every dp rank reduce-scatters every trainable parameter, used or not (e.g. a padding forward
            # that scores no token): the collectives must match across ranks.
            module.set_reduce_scatter_unused_params(True, recurse=False)
    setattr(model, _REGION, types.MethodType(_call, model))
    register_fsdp_forward_method(model, _REGION)
    # The root must be initialised as FSDP's root before any decoder layer runs on its own (rollouts run
    # the layers outside any region), else each layer would make itself a root: run one empty region now.
    with torch.no_grad():
        forward_region(model, lambda: None)


def _call(self: nn.Module, fn: Callable[[], T]) -> T:
    return fn()


def forward_region(model: nn.Module, fn: Callable[[], T]) -> T:
    """fn() with a sharded model's root parameters (embeddings, final norm, LM head) gathered.

    Every use of the policy's or the reference's decoder for training or scoring goes through here: FSDP
    treats the region as the root module's forward, so the root's gradients are reduce-scattered after the
    backward of fn's outputs, and the decoder layers' own gathers follow the usual unit hooks. After a
    region run without grad the root is freed again. A plain call for a model that is not sharded. fn takes
    no arguments (a closure): FSDP would move and cast the tensors inside a forward's arguments.
    """
    region = getattr(model, _REGION, None)
    if region is None:
        return fn()
    out = region(lambda: _without_views(fn()))
    if not torch.is_grad_enabled() and not getattr(model, _GATHERED, False):
        model.reshard()
    return out


def _without_views(out: Any) -> Any:
    """Copies of the views among fn's outputs that need grad (FSDP hooks them for its backward, and an
    in-place op on a view would drop the hook); tuples and lists are walked, anything else kept."""
    if isinstance(out, torch.Tensor):
        return out.clone() if out.requires_grad and out._base is not None else out
    if isinstance(out, (tuple, list)):
        return type(out)(_without_views(item) for item in out)
    return out


@contextlib.contextmanager
def gathered(model: nn.Module, *, everything: bool = True) -> Iterator[None]:
    """Hold a sharded model's full weights (in the gather dtype) for the block; a no-op for a plain model.

    everything: every unit (what the HF engine needs: it runs the decoder a different number of times on
    each rank, which per-forward all-gathers cannot follow); False: the root only (the token embeddings
    that build rollout inputs, for engines with their own copy of the weights). One all-gather per unit on
    entry, no communication inside, the shards back on exit. A collective on entry (every rank, same
    `everything`). Not for training inside: gradients are not reduced in the block.
    """
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)] if everything else [model]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    setattr(model, _GATHERED, True)
    try:
        yield
    finally:
        setattr(model, _GATHERED, False)
        for unit in units:
            unit.reshard()
            # The root keeps its own setting (False, see shard_model); the layers free after each forward.
            unit.set_reshard_after_forward(unit is not model, recurse=False)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of a DTensor (a collective over its mesh), or the tensor itself."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A sharded model's full state dict as CPU tensors on rank 0 ({} on the other ranks); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def local_numel(model: nn.Module) -> tuple[int, int]:
    """(elements this rank stores, elements of the full model) over the model's parameters."""
    local = full = 0
    for param in model.parameters():
        full += param.numel()
        local += param.to_local().numel() if is_dtensor(param) else param.numel()
    return local, full
