"""Policy loss, KL estimators and aggregation vs hand-computed values; sharded normalization; gradients.

References: per-token losses and gradients worked out by hand below (ratio r, advantage A, clip_low 0.2,
clip_high 0.28, dual clip c = 3); the exact KL of two categoricals for the estimators' unbiasedness.
Tolerance: 1e-9 absolute on float64 inputs unless stated.
"""

from __future__ import annotations

import math

import pytest
import torch

from longrl.errors import ConfigError
from longrl.rl.losses import (
    K3_CLAMP,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    GlobalCounts,
    aggregate,
    get_kl_estimator,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_loss,
    local_counts,
    policy_loss,
    tis_weights,
)

F64 = torch.float64
ATOL = 1e-9


def one_token(ratio: float, adv: float, **kwargs):
    """Loss, d loss / d logprob and metrics for a single token with the given ratio and advantage."""
    logp = torch.tensor([[math.log(ratio)]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=F64)
    loss, metrics = policy_loss(logp, old, torch.tensor([adv], dtype=F64), torch.ones(1, 1), **kwargs)
    loss.backward()
    return loss.item(), logp.grad.item(), metrics


CLIP = {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": 3.0}
# (ratio, A, expected loss, expected gradient, which clip metric fires). Loss = max(-A r, -A clip(r)); the
# gradient is -A r where the unclipped branch is active and 0 where a clip (or the dual clip) took over.
CASES = [
    (1.1, 1.0, -1.1, -1.1, None),  # inside [0.8, 1.28]
    (1.25, 1.0, -1.25, -1.25, None),  # inside thanks to clip-higher (would be clipped at 1.2)
    (1.5, 1.0, -1.28, 0.0, "clip_frac_high"),  # A > 0, r above 1 + clip_high
    (4.0, 2.0, -2.56, 0.0, "clip_frac_high"),  # -2 * 1.28
    (0.5, 1.0, -0.5, -0.5, None),  # A > 0, r below 1 - clip_low: PPO does not clip this side
    (0.5, -1.0, 0.8, 0.0, "clip_frac_low"),  # A < 0, r below 1 - clip_low
    (0.85, -1.0, 0.85, 0.85, None),  # A < 0, inside
    (1.5, -1.0, 1.5, 1.5, None),  # A < 0, r above 1 + clip_high: unclipped, and below c = 3
    (4.0, -1.0, 3.0, 0.0, "dual_clip_frac"),  # A < 0, r > c: bounded at -A c
    (5.0, -0.5, 1.5, 0.0, "dual_clip_frac"),  # 0.5 * 3
    (2.0, 0.0, 0.0, 0.0, None),  # zero advantage
]


@pytest.mark.parametrize(("ratio", "adv", "loss", "grad", "fired"), CASES)
def test_clipped_surrogate_hand_cases(ratio, adv, loss, grad, fired):
    got_loss, got_grad, metrics = one_token(ratio, adv, **CLIP)
    assert got_loss == pytest.approx(loss, abs=ATOL)
    assert got_grad == pytest.approx(grad, abs=ATOL)
    for name in ("clip_frac_low", "clip_frac_high", "dual_clip_frac"):
        assert metrics[name].item() == (1.0 if name == fired else 0.0), name
    assert metrics["clip_frac"].item() == (1.0 if fired in ("clip_frac_low", "clip_frac_high") else 0.0)


def test_symmetric_clip_and_no_dual_clip():
    # clip_high None = clip_low: r = 1.25 with A = 1 is now clipped at 1.2.
    assert one_token(1.25, 1.0, clip_low=0.2)[:2] == pytest.approx((-1.2, 0.0), abs=ATOL)
    # Without the dual clip a negative-advantage token with an exploded ratio is unbounded: -A r = 4.
    assert one_token(4.0, -1.0, clip_low=0.2, dual_clip=None)[:2] == pytest.approx((4.0, 4.0), abs=ATOL)
    with pytest.raises(ValueError, match="dual_clip"):
        one_token(1.0, 1.0, dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_low"):
        one_token(1.0, 1.0, clip_low=1.0)


def test_batch_of_cases_metrics_and_mask():
    """All CASES in one [B, T] batch, padded with NaN garbage: token-mean of the hand losses, finite grads."""
    ratios = torch.tensor([c[0] for c in CASES], dtype=F64)
    advs = torch.tensor([c[1] for c in CASES], dtype=F64)
    n = len(CASES)
    # Two columns: the case token, then a masked pad whose logprob is NaN (must not poison anything).
    logp = torch.stack([ratios.log(), torch.full((n,), math.nan, dtype=F64)], 1).requires_grad_()
    old = torch.zeros(n, 2, dtype=F64)
    mask = torch.tensor([[1, 0]] * n)
    loss, metrics = policy_loss(logp, old, advs, mask, **CLIP)
    loss.backward()
    assert loss.item() == pytest.approx(sum(c[2] for c in CASES) / n, abs=ATOL)
    torch.testing.assert_close(logp.grad[:, 0], torch.tensor([c[3] for c in CASES], dtype=F64) / n)
    assert torch.equal(logp.grad[:, 1], torch.zeros(n, dtype=F64))
    fired = [c[4] for c in CASES]
    assert metrics["clip_frac_high"].item() == pytest.approx(fired.count("clip_frac_high") / n)
    assert metrics["clip_frac_low"].item() == pytest.approx(fired.count("clip_frac_low") / n)
    assert metrics["dual_clip_frac"].item() == pytest.approx(fired.count("dual_clip_frac") / n)
    # approx_kl = mean((r - 1) - log r), ratio_mean = mean(r), over the real tokens only.
    assert metrics["approx_kl"].item() == pytest.approx(((ratios - 1) - ratios.log()).mean().item())
    assert metrics["ratio_mean"].item() == pytest.approx(ratios.mean().item())
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_gradient_sign_on_policy():
    """On-policy (old = logprobs.detach()): loss.backward pushes logprobs up for A > 0, down for A < 0."""
    torch.manual_seed(0)
    logp = (-torch.rand(4, 5, dtype=F64) * 3).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0], dtype=F64)
    mask = torch.ones(4, 5)
    mask[2, 3:] = 0
    loss, _ = policy_loss(logp, logp.detach(), adv, mask)
    assert loss.item() == pytest.approx(-(adv[:, None] * mask.to(F64)).sum().item() / mask.sum().item())
    loss.backward()
    step = -logp.grad  # gradient descent direction
    real = mask.bool()
    assert (step[0][real[0]] > 0).all() and (step[2][real[2]] > 0).all()
    assert (step[1] < 0).all() and (step[3] < 0).all()
    assert torch.equal(logp.grad[2, 3:], torch.zeros(2, dtype=F64))
    # token-mean: each real token's gradient is -A / number of real tokens.
    torch.testing.assert_close(logp.grad[0], torch.full((5,), -1.0 / 18, dtype=F64))


def test_per_token_advantages_equal_broadcast():
    torch.manual_seed(1)
    logp, old = -torch.rand(3, 4, dtype=F64), -torch.rand(3, 4, dtype=F64)
    adv = torch.randn(3, dtype=F64)
    mask = torch.ones(3, 4)
    a, _ = policy_loss(logp, old, adv, mask)
    b, _ = policy_loss(logp, old, adv[:, None].expand(3, 4), mask)
    assert a.item() == pytest.approx(b.item(), abs=ATOL)


# ------------------------------------------------------------------------------------------------- TIS


def test_tis_weights_hand_values():
    # exp(old - rollout): 0.5 / 0.25 = 2 -> 2; 0.5 / 0.1 = 5 -> capped at 2; 0.3 / 0.6 = 0.5.
    old = torch.tensor([0.5, 0.5, 0.3], dtype=F64).log()
    rollout = torch.tensor([0.25, 0.1, 0.6], dtype=F64).log()
    torch.testing.assert_close(tis_weights(old, rollout, 2.0), torch.tensor([2.0, 2.0, 0.5], dtype=F64))
    torch.testing.assert_close(tis_weights(old, rollout, 10.0), torch.tensor([2.0, 5.0, 0.5], dtype=F64))
    with pytest.raises(ValueError):
        tis_weights(old, rollout, 0.0)


def test_tis_scales_each_token_loss():
    # Three tokens, all inside the clip range (r = 1, 1.1, 0.9), A = 1: loss_t = -r_t, weights 2, 2 (cap), 0.5.
    ratios = torch.tensor([[1.0, 1.1, 0.9]], dtype=F64)
    old = torch.tensor([[0.5, 0.5, 0.3]], dtype=F64).log()
    rollout = torch.tensor([[0.25, 0.1, 0.6]], dtype=F64).log()
    logp = (old + ratios.log()).requires_grad_()
    loss, metrics = policy_loss(
        logp, old, torch.ones(1, dtype=F64), torch.ones(1, 3), rollout_logprobs=rollout, tis_cap=2.0
    )
    expected = -(2.0 * 1.0 + 2.0 * 1.1 + 0.5 * 0.9) / 3
    assert loss.item() == pytest.approx(expected, abs=ATOL)
    loss.backward()  # weights are constants: d/dlogp = -w r / 3
    torch.testing.assert_close(logp.grad, -torch.tensor([[2.0, 2.2, 0.45]], dtype=F64) / 3)
    assert metrics["tis_weight_mean"].item() == pytest.approx(4.5 / 3)
    assert metrics["tis_clip_frac"].item() == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------- KL


def test_kl_estimators_hand_values():
    # log_r = logp - ref = [0.5, 0, -1]
    logp = torch.tensor([-1.0, -0.5, -2.0], dtype=F64)
    ref = torch.tensor([-1.5, -0.5, -1.0], dtype=F64)
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([0.5, 0.0, -1.0], dtype=F64))
    torch.testing.assert_close(kl_k2(logp, ref), torch.tensor([0.125, 0.0, 0.5], dtype=F64))
    # k3 = exp(-log_r) - 1 + log_r: exp(-0.5) - 0.5 = 0.1065307; 0; e - 2 = 0.7182818
    torch.testing.assert_close(
        kl_k3(logp, ref), torch.tensor([0.1065306597, 0.0, 0.7182818285], dtype=F64), atol=1e-9, rtol=0
    )


def test_k3_clamp_and_gradient():
    # log_r = -5: exp(5) - 6 = 142.4 > K3_CLAMP -> clamped, no gradient. log_r = 0.5: d k3 / d logp = 1 - exp(-0.5).
    logp = torch.tensor([-6.0, -1.0], dtype=F64, requires_grad=True)
    ref = torch.tensor([-1.0, -1.5], dtype=F64)
    k3 = kl_k3(logp, ref)
    assert k3[0].item() == K3_CLAMP == 10.0
    k3.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 1 - math.exp(-0.5)], dtype=F64))


def test_k1_k3_unbiased_for_kl():
    """E_{x~p}[k1] = E_{x~p}[k3] = KL(p || q): Monte Carlo over 200k samples, tolerance 0.01 (std err ~0.002)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=F64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=F64)
    exact = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    for fn in (kl_k1, kl_k3):
        estimate = fn(p.log()[x], q.log()[x]).mean().item()
        assert estimate == pytest.approx(exact, abs=0.01), fn.__name__
    assert (kl_k3(p.log()[x], q.log()[x]) >= 0).all()


def test_kl_loss_aggregates_and_ignores_masked_garbage():
    logp = torch.tensor([[-1.0, -0.5, math.nan], [-2.0, math.inf, math.nan]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.5, -0.5, 0.0], [-1.0, 0.0, math.nan]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, metrics = kl_loss(logp, ref, mask, estimator="k2")
    assert loss.item() == pytest.approx((0.125 + 0.0 + 0.5) / 3, abs=ATOL)
    assert metrics["kl"].item() == pytest.approx(loss.item())
    loss.backward()  # d k2 / d logp = log_r / 3 on real tokens, 0 (not NaN) elsewhere
    torch.testing.assert_close(logp.grad, torch.tensor([[0.5, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=F64) / 3)
    seq_loss, _ = kl_loss(logp, ref, mask, estimator="k1", agg_mode="seq-mean-token-sum")
    assert seq_loss.item() == pytest.approx((0.5 + 0.0 - 1.0) / 2, abs=ATOL)


def test_kl_registry():
    assert KL_ESTIMATORS == {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
    assert get_kl_estimator("k3") is kl_k3
    with pytest.raises(ConfigError, match="k1, k2, k3"):
        get_kl_estimator("low_var")


# ------------------------------------------------------------------------------------------ aggregation

NAN = math.nan
# Ragged mask: sequence 0 has 3 tokens, sequence 1 has 1, sequence 2 none (NaN garbage where masked).
VALUES = torch.tensor([[1.0, 2.0, 3.0, NAN], [4.0, NAN, NAN, NAN], [NAN, NAN, NAN, NAN]], dtype=F64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
AGG_HAND = {
    "token-mean": (1 + 2 + 3 + 4) / 4,  # 2.5
    "seq-mean-token-mean": ((1 + 2 + 3) / 3 + 4 / 1) / 2,  # 3.0 (the empty sequence is not counted)
    "seq-mean-token-sum": ((1 + 2 + 3) + 4) / 2,  # 5.0
}


@pytest.mark.parametrize("mode", list(AGG_HAND))
def test_aggregation_hand_values(mode):
    assert aggregate(VALUES, MASK, mode).item() == pytest.approx(AGG_HAND[mode], abs=ATOL)
    assert aggregate(VALUES, torch.zeros_like(MASK), mode).item() == 0.0  # empty mask: 0, not NaN


def test_aggregation_registry_and_errors():
    assert set(LOSS_AGGREGATIONS) == set(AGG_HAND)
    with pytest.raises(ConfigError, match="token-mean"):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="shape"):
        aggregate(VALUES, MASK[:, :2])


@pytest.mark.parametrize("mode", list(AGG_HAND))
def test_sharded_losses_sum_to_the_global_loss(mode):
    """2 DP ranks (rows) x 2 SP ranks (columns, zigzag-like uneven cut): the shards' losses, each normalized
    by the global counts, sum to the loss of the whole batch. Tolerance 1e-12."""
    torch.manual_seed(2)
    values = torch.randn(6, 11, dtype=F64)
    lengths = torch.tensor([11, 0, 4, 1, 7, 9])
    mask = torch.arange(11)[None, :] < lengths[:, None]
    full = aggregate(values, mask, mode)

    dp = [slice(0, 3), slice(3, 6)]
    sp = [torch.tensor([0, 1, 2, 8, 9, 10]), torch.tensor([3, 4, 5, 6, 7])]
    total_tokens = sum(local_counts(mask[r][:, c]).tokens for r in dp for c in sp)
    seqs = 0
    seq_tokens = {}
    for r in dp:
        seq_tokens[r.start] = sum(local_counts(mask[r][:, c]).seq_tokens for c in sp)  # SP all-reduce
        seqs += (seq_tokens[r.start] > 0).sum()  # DP all-reduce
    shard_sum = sum(
        aggregate(
            values[r][:, c],
            mask[r][:, c],
            mode,
            GlobalCounts(tokens=total_tokens, seq_tokens=seq_tokens[r.start], seqs=seqs),
        )
        for r in dp
        for c in sp
    )
    assert shard_sum.item() == pytest.approx(full.item(), abs=1e-12)


def test_token_mean_global_count_equals_concatenated_shards():
    torch.manual_seed(3)
    shards = [(torch.randn(2, 5, dtype=F64), torch.rand(2, 5) > 0.4) for _ in range(3)]
    total = sum(m.sum() for _, m in shards)
    per_shard = [aggregate(v, m, "token-mean", GlobalCounts(tokens=total)) for v, m in shards]
    concat = aggregate(torch.cat([v for v, _ in shards]), torch.cat([m for _, m in shards]), "token-mean")
    assert sum(per_shard).item() == pytest.approx(concat.item(), abs=1e-12)
    # ... and the policy loss takes the same counts: sharded policy losses sum to the full one.
    logp, old = -torch.rand(6, 5, dtype=F64), -torch.rand(6, 5, dtype=F64)
    adv, mask = torch.randn(6, dtype=F64), torch.cat([m for _, m in shards])
    full, _ = policy_loss(logp, old, adv, mask)
    parts = [
        policy_loss(
            logp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], counts=GlobalCounts(total)
        )[0]
        for i in (0, 2, 4)
    ]
    assert sum(parts).item() == pytest.approx(full.item(), abs=1e-12)


def test_entropy_is_logged_as_token_mean():
    ent = torch.tensor([[1.0, 3.0, NAN]], dtype=F64)
    _, metrics = policy_loss(
        torch.zeros(1, 3, dtype=F64),
        torch.zeros(1, 3, dtype=F64),
        torch.ones(1),
        torch.tensor([[1, 1, 0]]),
        entropy=ent,
    )
    assert metrics["entropy"].item() == pytest.approx(2.0)
