"""AdamW param groups, the lr schedule at hand-computed steps, gradient clipping against torch's."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from longrl.errors import ConfigError
from longrl.train.optim import OptimConfig, build_optimizer, build_scheduler, clip_gradients, lr_multiplier


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)  # weight decayed, bias not
        self.norm = nn.LayerNorm(6)  # weight and bias: 1-D, not decayed
        self.scale = nn.Parameter(torch.ones(6))  # 1-D, not decayed
        self.embed = nn.Embedding(5, 4)  # a matrix: decayed
        self.frozen = nn.Linear(6, 6, bias=False)
        self.frozen.weight.requires_grad_(False)


def test_param_groups_no_decay_on_bias_norm_and_1d():
    model = Block()
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1, beta1=0.8, beta2=0.95, eps=1e-6))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, skip = opt.param_groups
    assert (decay["name"], decay["weight_decay"]) == ("decay", 0.1)
    assert (skip["name"], skip["weight_decay"]) == ("no_decay", 0.0)
    assert sorted(names[id(p)] for p in decay["params"]) == ["embed.weight", "proj.weight"]
    assert sorted(names[id(p)] for p in skip["params"]) == ["norm.bias", "norm.weight", "proj.bias", "scale"]
    for group in opt.param_groups:  # frozen weights are not handed to the optimizer
        assert all(p is not model.frozen.weight for p in group["params"])
        assert group["lr"] == 1e-3 and group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6


def test_decay_applies_only_to_the_decay_group():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(1.0)
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5))
    model.weight.grad = torch.zeros_like(model.weight)
    model.bias.grad = torch.zeros_like(model.bias)
    opt.step()
    # With zero gradients AdamW's update is only the decoupled decay: w <- w * (1 - lr * wd).
    torch.testing.assert_close(model.weight, torch.full((2, 3), 1.0 - 0.1 * 0.5), rtol=0, atol=1e-7)
    torch.testing.assert_close(model.bias, torch.ones(2), rtol=0, atol=0)


def test_nothing_trainable_is_a_config_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig())


def scheduled_lrs(cfg: OptimConfig, total: int) -> list[float]:
    """lr used by optimizer steps 0..total (scheduler stepped after each, as trainers do)."""
    param = nn.Parameter(torch.zeros(2, 2))
    model = nn.Module()
    model.p = param
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total)
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_schedule_hand_computed():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    lrs = scheduled_lrs(cfg, total=14)
    # warmup: 0, 1/4, 2/4, 3/4, then 1 at step 4 (decay progress 0)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-12)
    # midpoint of the decay (step 4 + 10/2 = 9): 0.1 + 0.9 * 0.5 = 0.55
    assert lrs[9] == pytest.approx(0.55, abs=1e-12)
    # step 7 is 3/10 of the decay: 0.1 + 0.9 * (1 + cos(0.3 pi)) / 2
    assert lrs[7] == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.3 * math.pi)), abs=1e-12)
    # the end = min_lr_ratio, and it stays there past total_steps
    assert lrs[14] == pytest.approx(0.1, abs=1e-12)
    assert lr_multiplier(20, cfg, 14) == pytest.approx(0.1, abs=1e-12)


def test_linear_and_constant_schedules():
    lin = OptimConfig(lr=2.0, warmup_steps=2, schedule="linear", min_lr_ratio=0.0)
    lrs = scheduled_lrs(lin, total=6)
    assert lrs == pytest.approx([0.0, 1.0, 2.0, 1.5, 1.0, 0.5, 0.0], abs=1e-12)
    const = OptimConfig(lr=2.0, warmup_steps=2, schedule="constant")
    assert scheduled_lrs(const, total=4) == pytest.approx([0.0, 1.0, 2.0, 2.0, 2.0], abs=1e-12)
    nowarm = OptimConfig(lr=1.0, schedule="cosine")
    assert scheduled_lrs(nowarm, total=2) == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


def test_scheduler_state_roundtrip_continues_the_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.2)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = build_optimizer(model, cfg)
    sched2 = build_scheduler(opt2, cfg, 10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for o, s in ((opt, sched), (opt2, sched2)):
        o.step()
        s.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(lr_multiplier(6, cfg, 10))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0}, "optim.lr must be > 0"),
        ({"lr": float("nan")}, "optim.lr must be a finite number"),
        ({"weight_decay": -0.1}, "optim.weight_decay must be >= 0"),
        ({"beta1": 1.0}, r"optim.beta1 must be in \[0, 1\)"),
        ({"beta2": -0.1}, r"optim.beta2 must be in \[0, 1\)"),
        ({"eps": 0}, "optim.eps must be > 0"),
        ({"warmup_steps": -1}, "optim.warmup_steps must be an integer >= 0"),
        ({"schedule": "step"}, "optim.schedule must be one of cosine, linear, constant"),
        ({"min_lr_ratio": 1.5}, r"optim.min_lr_ratio must be in \[0, 1\]"),
        ({"max_grad_norm": 0}, "optim.max_grad_norm must be > 0 or null"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        OptimConfig(**kwargs)


def test_scheduler_rejects_bad_step_counts():
    opt = build_optimizer(nn.Linear(2, 2), OptimConfig())
    with pytest.raises(ConfigError, match="number of training steps must be an integer >= 1"):
        build_scheduler(opt, OptimConfig(), 0)
    with pytest.raises(ConfigError, match=r"warmup_steps \(5\) is larger than the number of steps \(3\)"):
        build_scheduler(opt, OptimConfig(warmup_steps=5), 3)


def grads_pair(seed: int, scale: float) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (2, 2, 2)]
    a, b = [], []
    for shape in shapes:
        value = torch.randn(shape, generator=g)
        grad = torch.randn(shape, generator=g) * scale
        for out in (a, b):
            p = nn.Parameter(value.clone())
            p.grad = grad.clone()
            out.append(p)
    a.append(nn.Parameter(torch.ones(3)))  # no grad: ignored by both
    b.append(nn.Parameter(torch.ones(3)))
    return a, b


@pytest.mark.parametrize("scale, max_norm", [(10.0, 1.0), (0.01, 1.0), (1.0, 2.5)])
def test_clip_matches_torch(scale, max_norm):
    ours, ref = grads_pair(0, scale)
    norm = clip_gradients(ours, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert norm == pytest.approx(float(ref_norm), rel=1e-6)
    for p, q in zip(ours, ref, strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)


def test_clip_none_reports_the_norm_without_changing_gradients():
    ours, _ = grads_pair(1, 10.0)
    before = [p.grad.clone() for p in ours if p.grad is not None]
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in before])).item()
    assert clip_gradients(iter(ours), None) == pytest.approx(expected, rel=1e-6)  # any iterable
    for p, g in zip([p for p in ours if p.grad is not None], before, strict=True):
        assert torch.equal(p.grad, g)


def test_clip_non_finite_leaves_gradients_alone():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, float("inf"), 2.0])
    assert math.isinf(clip_gradients([p], 1.0))
    assert p.grad[0] == 1.0 and p.grad[2] == 2.0
    assert clip_gradients([nn.Parameter(torch.zeros(2))], 1.0) == 0.0  # no gradients at all
