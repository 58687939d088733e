"""LoRA adapters on the language model's linear layers.

A wrapped layer computes y = W x + b + scale * B A dropout(x), with A [r, in], B [out, r], scale = alpha / r.
B starts at zero, so a freshly wrapped model computes exactly what it did before. `LoRALinear` subclasses
nn.Linear and keeps the original `weight` / `bias` Parameters (same objects, same state-dict names), so the
base weights stay where HF code, the SP prefill and checkpoints expect them; only `lora_A` / `lora_B` are new.

With adapters the reference model of RL needs no copy: `adapters_disabled(model)` runs the base weights.
`merge_lora` folds scale * B A into W and unwraps the layers for export as a plain HF folder.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from longrl.errors import ConfigError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class LoRAConfig:
    """LoRA settings (the `model.lora` config section). rank 0 turns LoRA off (full fine-tuning).

    targets: names of the language model's nn.Linear modules to adapt, matched against the end of each
    module's dotted name ("q_proj" matches "layers.3.self_attn.q_proj"; "mlp.up_proj" works too).
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise ConfigError(f"model.lora.rank must be an integer >= 0 (0 = no LoRA), got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError(f"model.lora.alpha must be a number > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ConfigError(f"model.lora.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(
                f"model.lora.targets must be a non-empty list of module names, got {self.targets!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.rank > 0


class LoRALinear(nn.Linear):
    """An nn.Linear plus a low-rank update: y = x W^T + b + scale * dropout(x) A^T B^T.

    weight [out, in] and bias [out] are the wrapped layer's own Parameters (shared, not copied);
    lora_A [r, in] (Kaiming-uniform, as nn.Linear initializes) and lora_B [out, r] (zeros) are new, in the
    base weight's dtype and device. The low-rank path runs in the input's dtype.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: that would allocate a second weight
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.rank = rank
        self.scale = alpha / rank
        self.disabled = False
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]."""
        out = F.linear(x, self.weight, self.bias)
        if self.disabled:
            return out
        a = self.lora_A.to(x.dtype)
        b = self.lora_B.to(x.dtype)
        return out + F.linear(F.linear(self.lora_dropout(x), a), b) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """scale * B A [out, in], computed in float32."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}"


def language_model_of(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the language model inside `model` (its first submodule named
    `language_model`, e.g. Qwen2.5-VL's `model.language_model`), or ("", model) when it has none."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "language_model":
            return name, module
    return "", model


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap the target nn.Linear layers of the language model in LoRALinear, in place; freeze everything else.

    Returns the wrapped modules' dotted names (relative to `model`); [] and no change when cfg.rank == 0.
    Afterwards only lora_A / lora_B require grad (a caller may unfreeze more, e.g. the vision tower).
    Raises ConfigError when no linear layer matches cfg.targets, RuntimeError when LoRA is already applied.
    """
    if not cfg.enabled:
        return []
    if has_lora(model):
        raise RuntimeError("the model already has LoRA adapters")
    lm_name, lm = language_model_of(model)
    prefix = f"{lm_name}." if lm_name else ""
    linears = [(n, m) for n, m in lm.named_modules() if isinstance(m, nn.Linear)]
    chosen = [(n, m) for n, m in linears if any(n == t or n.endswith("." + t) for t in cfg.targets)]
    if not chosen:
        available = sorted({n.rsplit(".", 1)[-1] for n, _ in linears})
        raise ConfigError(
            f"model.lora.targets {list(cfg.targets)} match no linear layer of the language model "
            f"(its linear layers: {', '.join(available) or 'none'})"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    for name, linear in chosen:
        _replace_module(lm, name, LoRALinear(linear, cfg.rank, cfg.alpha, cfg.dropout))
    return [prefix + name for name, _ in chosen]


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(dotted name, layer) of every LoRALinear in `model`."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def has_lora(model: nn.Module) -> bool:
    """True when `model` contains at least one LoRA layer."""
    return next(lora_layers(model), None) is not None


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every LoRA layer computes its base W x + b only (the reference model); a no-op
    without adapters. The previous state is restored on exit, also after an exception."""
    layers = [layer for _, layer in lora_layers(model)]
    previous = [layer.disabled for layer in layers]
    try:
        for layer in layers:
            layer.disabled = True
        yield model
    finally:
        for layer, was in zip(layers, previous, strict=True):
            layer.disabled = was


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold scale * B A into each wrapped base weight and put plain nn.Linear layers back, in place.

    The sum is computed in float32 and rounded once to the weight's dtype. The unwrapped layers keep the
    (now merged) weight and bias Parameters, so state-dict names are those of the original model.
    """
    for name, layer in list(lora_layers(model)):
        merged = layer.weight.float() + layer.delta_weight().to(layer.weight.device)
        layer.weight.copy_(merged.to(layer.weight.dtype))
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight = layer.weight
        plain.bias = layer.bias
        _replace_module(model, name, plain)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """{dotted parameter name: tensor} of the adapter weights only (every `lora_A` / `lora_B`), detached."""
    return {
        f"{name}.{part}": getattr(layer, part).detach()
        for name, layer in lora_layers(model)
        for part in ("lora_A", "lora_B")
    }


def _replace_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
