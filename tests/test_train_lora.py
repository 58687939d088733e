"""LoRA: the math by hand, zero-init B, freezing, disabling (the reference model) and merging, on the tiny
Qwen2.5-VL. Reference: the model's own outputs before wrapping; fp32 tolerance 1e-5 where float sums reorder."""

from __future__ import annotations

import pytest
import torch
from tiny_model import tiny_model
from torch import nn

from longrl.errors import ConfigError
from longrl.train.lora import (
    LoRAConfig,
    LoRALinear,
    adapters_disabled,
    apply_lora,
    has_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
)
from longrl.train.optim import OptimConfig, build_optimizer

TOL = {"rtol": 1e-5, "atol": 1e-5}


def randomize_b(model: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every adapter a non-zero B (as after training), so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


def test_lora_linear_math_by_hand():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    weight, bias = base.weight, base.bias
    layer = LoRALinear(base, rank=3, alpha=6.0)
    assert layer.weight is weight and layer.bias is bias  # shared, not copied
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)  # B = 0: exactly the base output
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = x @ weight.T + bias + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)  # scale = alpha / rank = 2
    torch.testing.assert_close(layer(x), expected, **TOL)
    layer.disabled = True
    torch.testing.assert_close(layer(x), x @ weight.T + bias, **TOL)


def test_lora_linear_without_bias_and_dropout_only_in_training():
    torch.manual_seed(1)
    layer = LoRALinear(nn.Linear(8, 4, bias=False), rank=2, alpha=2.0, dropout=0.5)
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight", "lora_A", "lora_B"]
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 8)
    layer.eval()
    expected = x @ layer.weight.T + x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected, **TOL)
    layer.train()
    torch.manual_seed(5)
    dropped = layer(x)
    torch.manual_seed(5)
    mask = nn.functional.dropout(torch.ones_like(x), 0.5, training=True)  # same draw as the layer's
    torch.testing.assert_close(
        dropped, x @ layer.weight.T + (x * mask) @ layer.lora_A.T @ layer.lora_B.T, **TOL
    )


@pytest.fixture()
def tiny():
    model, _ = tiny_model(fresh=True)
    model.eval()
    ids = torch.randint(
        0, model.config.text_config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits
    return model, ids, base_logits


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_apply_lora_on_tiny_qwen(tiny):
    model, ids, base_logits = tiny
    names_before = list(model.state_dict())
    wrapped = apply_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=["q_proj", "v_proj", "mlp.up_proj"]))
    layers = model.config.text_config.num_hidden_layers
    assert len(wrapped) == 3 * layers
    assert all(n.startswith("model.language_model.layers.") for n in wrapped)  # the vision tower is untouched
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == {"q_proj", "v_proj", "up_proj"}
    # B = 0: the wrapped model computes exactly the same logits.
    torch.testing.assert_close(logits(model, ids), base_logits, rtol=0, atol=0)
    # Base state-dict names are unchanged; only lora_A / lora_B are added.
    added = [k for k in model.state_dict() if k not in names_before]
    assert set(names_before) <= set(model.state_dict())
    assert sorted(added) == sorted(lora_state_dict(model)) and len(added) == 2 * len(wrapped)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(added)
    optimizer = build_optimizer(model, OptimConfig())
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(added)


def test_gradients_reach_only_the_adapters(tiny):
    model, ids, _ = tiny
    apply_lora(model, LoRAConfig(rank=2))
    randomize_b(model)
    model(input_ids=ids).logits.square().mean().backward()
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_adapters_disabled_gives_base_outputs_and_restores(tiny):
    model, ids, base_logits = tiny
    apply_lora(model, LoRAConfig(rank=4))
    randomize_b(model)
    adapted = logits(model, ids)
    assert (adapted - base_logits).abs().max() > 1e-3  # the adapters do change the output
    with adapters_disabled(model):
        torch.testing.assert_close(logits(model, ids), base_logits, **TOL)
    torch.testing.assert_close(logits(model, ids), adapted, rtol=0, atol=0)
    with pytest.raises(KeyError), adapters_disabled(model):
        raise KeyError("boom")
    assert not any(layer.disabled for _, layer in lora_layers(model))


def test_merge_lora_equals_the_unmerged_adapter(tiny):
    model, ids, base_logits = tiny
    names_before = list(model.state_dict())
    apply_lora(
        model, LoRAConfig(rank=4, alpha=16.0, targets=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])
    )
    randomize_b(model, seed=3)
    adapted = logits(model, ids)
    q_layer = dict(lora_layers(model))["model.language_model.layers.0.self_attn.q_proj"]
    expected_q = q_layer.weight.detach() + q_layer.scale * q_layer.lora_B.detach() @ q_layer.lora_A.detach()
    merge_lora(model)
    assert not has_lora(model)
    assert list(model.state_dict()) == names_before  # exportable as the original HF layout
    q_proj = model.model.language_model.layers[0].self_attn.q_proj
    assert type(q_proj) is nn.Linear
    torch.testing.assert_close(q_proj.weight, expected_q, **TOL)
    torch.testing.assert_close(logits(model, ids), adapted, **TOL)
    assert (adapted - base_logits).abs().max() > 1e-3


def test_rank_zero_is_off_and_bad_targets_are_config_errors(tiny):
    model, _, _ = tiny
    assert apply_lora(model, LoRAConfig(rank=0)) == []
    assert all(p.requires_grad for p in model.parameters()) and not has_lora(model)
    with pytest.raises(
        ConfigError, match=r"match no linear layer of the language model \(its linear layers: .*q_proj"
    ):
        apply_lora(model, LoRAConfig(rank=2, targets=["qkv_proj"]))
    # "qkv" is a vision-tower layer: not a target, since LoRA adapts the language model only
    with pytest.raises(ConfigError, match="match no linear layer"):
        apply_lora(model, LoRAConfig(rank=2, targets=["qkv"]))
    apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(RuntimeError, match="already has LoRA"):
        apply_lora(model, LoRAConfig(rank=2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": -1}, "model.lora.rank must be an integer >= 0"),
        ({"rank": 2.5}, "model.lora.rank must be an integer >= 0"),
        ({"alpha": 0}, "model.lora.alpha must be a number > 0"),
        ({"dropout": 1.0}, r"model.lora.dropout must be in \[0, 1\)"),
        ({"targets": []}, "model.lora.targets must be a non-empty list"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LoRAConfig(**kwargs)


def test_lora_on_a_bf16_model_runs_in_the_input_dtype():
    base = nn.Linear(4, 3).to(torch.bfloat16)
    layer = LoRALinear(base, rank=2, alpha=2.0)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.bfloat16
    assert layer(torch.randn(2, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
