"""Optimizer, learning-rate schedule and gradient clipping shared by the SFT and RL trainers.

AdamW over the trainable parameters, with weight decay on matrices only (biases, norm weights and every other
1-D parameter are not decayed: decaying a norm's gain towards 0 shrinks activations, it does not regularize).
The schedule multiplies the base lr by: a linear warmup from 0 over `warmup_steps`, then a cosine or linear
decay to `min_lr_ratio` at `total_steps` (held there after), or a constant 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from longrl.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """AdamW + schedule settings (the `optim` section of a training config).

    max_grad_norm: clip the global gradient 2-norm to this value before each optimizer step; None = no clip.
    """

    lr: float = 1e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"optim.{name} must be a finite number, got {value!r}")
            return float(value)

        if number("lr") <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if number("weight_decay") < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= number(name) < 1.0:
                raise ConfigError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        if number("eps") <= 0:
            raise ConfigError(f"optim.eps must be > 0, got {self.eps}")
        if (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or self.warmup_steps < 0
        ):
            raise ConfigError(f"optim.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= number("min_lr_ratio") <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.max_grad_norm is not None and number("max_grad_norm") <= 0:
            raise ConfigError(
                f"optim.max_grad_norm must be > 0 or null (no clipping), got {self.max_grad_norm}"
            )


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """True for parameters that are not decayed: biases, norm weights, any parameter with fewer than 2 dims."""
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith("bias") or "norm" in lowered


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters (requires_grad), in two groups.

    Group 0 ("decay"): weight_decay = cfg.weight_decay; group 1 ("no_decay"): weight_decay = 0 (see
    `no_weight_decay`). Both groups always exist (possibly empty) so optimizer state dicts line up across runs.
    Raises ConfigError when nothing is trainable.
    """
    decay: list[nn.Parameter] = []
    skip: list[nn.Parameter] = []
    for name, param in model.named_parameters():  # shared (tied) parameters are listed once
        if param.requires_grad:
            (skip if no_weight_decay(name, param) else decay).append(param)
    if not decay and not skip:
        raise ConfigError("the model has no trainable parameters (everything is frozen); nothing to optimize")
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": skip, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """The factor on cfg.lr for optimizer step `step` (0-based): warmup, then decay to cfg.min_lr_ratio.

    Warmup: step / warmup_steps for step < warmup_steps (0 at step 0). Then with progress p = (step - warmup)
    / (total_steps - warmup) clamped to [0, 1]: cosine r + (1 - r) * (1 + cos(pi p)) / 2; linear
    r + (1 - r) * (1 - p); constant 1 (r = min_lr_ratio).
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return step / warmup
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = total_steps - warmup
    progress = 1.0 if decay_steps <= 0 else min(1.0, max(0.0, (step - warmup) / decay_steps))
    ratio = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return ratio + (1.0 - ratio) * (1.0 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """LambdaLR applying `lr_multiplier` (call `.step()` once after each optimizer step).

    Raises ConfigError when total_steps < 1 or warmup_steps > total_steps.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(f"the number of training steps must be an integer >= 1, got {total_steps!r}")
    if cfg.warmup_steps > total_steps:
        raise ConfigError(
            f"optim.warmup_steps ({cfg.warmup_steps}) is larger than the number of steps ({total_steps})"
        )
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg, total_steps))


def apply_optim_config(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, cfg: OptimConfig) -> None:
    """Put cfg's hyperparameters back after a checkpoint was loaded (a resumed run may change them).

    Loading restores the saved lr, betas, eps and weight decay into the param groups and the saved base lr
    into the schedule, which would silently keep the old values. Afterwards the groups hold cfg's values and
    the lr of the schedule's current step (base lr x the multiplier of `scheduler`, which was built from
    cfg and the run's step count). With unchanged values nothing changes: the same floats are recomputed.
    """
    for group in optimizer.param_groups:
        group["betas"] = (cfg.beta1, cfg.beta2)
        group["eps"] = cfg.eps
        group["weight_decay"] = 0.0 if group.get("name") == "no_decay" else cfg.weight_decay
        group["initial_lr"] = cfg.lr
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    # LambdaLR.get_lr's own formula at the restored step.
    pairs = zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    lrs = [base * factor(scheduler.last_epoch) for base, factor in pairs]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None) -> float:
    """Clip the global 2-norm of the gradients of `params` to max_norm (None: no clipping); return the norm.

    The returned value is the total norm before clipping (inf/nan when a gradient is not finite; the
    gradients are then left as they are for the caller to skip the step). Parameters without a gradient are
    ignored; 0.0 when none has one.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # FSDP2 shards (DTensors) and replicated gradients (e.g. an unsharded vision tower) cannot share one
    # foreach norm: take each kind's norm and combine them.
    sharded = [g for g in grads if hasattr(g, "full_tensor")]
    plain = [g for g in grads if not hasattr(g, "full_tensor")]
    norms = []
    if plain:
        norms.append(torch.nn.utils.get_total_norm(plain, norm_type=2.0))
    if sharded:  # a DTensor norm over the shards -> the global value (a collective)
        norms.append(torch.nn.utils.get_total_norm(sharded, norm_type=2.0).full_tensor())
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    norm = float(total)
    if max_norm is not None and math.isfinite(norm):
        # The same factor as torch.nn.utils.clip_grad_norm_; a plain float works on DTensor gradients too.
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for grad in grads:
                grad.mul_(coef)
    return norm
