"""PPO/GRPO losses over per-token log-probabilities: clipped surrogate, KL to the reference, aggregation.

Shapes: B sequences (responses) x T response positions. `logprobs`, `old_logprobs`, `ref_logprobs`,
`rollout_logprobs` are float [B, T] (log p of the sampled token); `response_mask` [B, T] (bool or 0/1) marks
real response tokens. Values at masked positions are never used (they may be garbage, even NaN).
Advantages are [B] (one per response, broadcast over tokens) or [B, T].

Sign conventions: log_ratio = logprobs - old_logprobs (ratio = pi_theta / pi_old); for the KL,
log_r = logprobs - ref_logprobs (policy minus reference; the tokens are sampled from the policy).

Aggregation modes (verl semantics; a "non-empty" sequence has at least one response token):
- "token-mean":          sum of all token values / number of tokens.
- "seq-mean-token-mean": mean over non-empty sequences of (sum of the sequence's values / its token count).
- "seq-mean-token-sum":  mean over non-empty sequences of the sum of the sequence's values.
Sharded batches (sequence-parallel shards of the tokens, data-parallel shards of the sequences) pass
`GlobalCounts`: each shard then divides its local sums by the counts of the whole batch, so the shards'
losses SUM to the loss of the whole batch (all-reduce gradients with SUM, or multiply by the world size when
the reduction averages).

Metrics are detached 0-dim tensors (no host sync here), token means over this shard's mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from longrl.errors import ConfigError

# exp() of a log-ratio beyond this overflows float32 soon after; verl clamps at the same value.
LOG_RATIO_CLAMP = 20.0
# k3 is clamped here (as verl's "low_var_kl") so that a few tokens far from the reference cannot dominate.
K3_CLAMP = 10.0


@dataclass(frozen=True)
class GlobalCounts:
    """Counts of the whole (all shards) batch, for shard-local losses that sum to the global loss.

    tokens: total response tokens (token-mean). seq_tokens: [B] response tokens of each of this shard's
    sequences over all its SP shards (seq-mean-token-mean). seqs: non-empty sequences over all DP ranks
    (both seq-mean modes). A field left None falls back to the local value.
    """

    tokens: float | torch.Tensor | None = None
    seq_tokens: torch.Tensor | None = None
    seqs: float | torch.Tensor | None = None


def local_counts(response_mask: torch.Tensor) -> GlobalCounts:
    """This shard's counts (tokens, seq_tokens [B], seqs) as tensors, ready to be all-reduced with SUM.

    Reduce `tokens` over every rank, `seq_tokens` over the SP group; recompute `seqs` from the reduced
    seq_tokens ((seq_tokens > 0).sum()) and reduce it over the DP group: a sequence split over SP ranks must
    be counted once.
    """
    mask = response_mask != 0
    seq_tokens = mask.sum(-1)
    return GlobalCounts(tokens=mask.sum(), seq_tokens=seq_tokens, seqs=(seq_tokens > 0).sum())


def _as_tensor(x: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where (not multiply): a NaN/inf at a masked position must not leak into sums or gradients.
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


def _seq_count(seq_tokens: torch.Tensor, counts: GlobalCounts, like: torch.Tensor) -> torch.Tensor:
    if counts.seqs is not None:
        return _as_tensor(counts.seqs, like).clamp_min(1)
    return (seq_tokens > 0).sum().to(like.dtype).clamp_min(1)


def _token_mean(values: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts) -> torch.Tensor:
    total = _masked(values, mask).sum()
    tokens = counts.tokens if counts.tokens is not None else mask.sum()
    return total / _as_tensor(tokens, total).clamp_min(1)


def _seq_mean_token_mean(values: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts) -> torch.Tensor:
    per_seq = _masked(values, mask).sum(-1)
    seq_tokens = counts.seq_tokens if counts.seq_tokens is not None else mask.sum(-1)
    seq_tokens = _as_tensor(seq_tokens, per_seq)
    return (per_seq / seq_tokens.clamp_min(1)).sum() / _seq_count(seq_tokens, counts, per_seq)


def _seq_mean_token_sum(values: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts) -> torch.Tensor:
    per_seq = _masked(values, mask).sum(-1)
    seq_tokens = counts.seq_tokens if counts.seq_tokens is not None else mask.sum(-1)
    return per_seq.sum() / _seq_count(_as_tensor(seq_tokens, per_seq), counts, per_seq)


Aggregation = Callable[[torch.Tensor, torch.Tensor, GlobalCounts], torch.Tensor]

LOSS_AGGREGATIONS: dict[str, Aggregation] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
}


def aggregate(
    values: torch.Tensor,
    response_mask: torch.Tensor,
    mode: str = "token-mean",
    counts: GlobalCounts | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, T] over the mask to a 0-dim tensor (see the module doc for the modes).

    Used for the policy loss, the KL term and entropy (bonus or logging). An empty mask gives 0.
    """
    try:
        fn = LOSS_AGGREGATIONS[mode]
    except KeyError:
        raise ConfigError(
            f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}"
        ) from None
    if values.shape != response_mask.shape:
        raise ValueError(
            f"values {tuple(values.shape)} and mask {tuple(response_mask.shape)} differ in shape"
        )
    return fn(values, response_mask != 0, counts or GlobalCounts())


def _token_mean_metric(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _token_mean(values.detach(), mask, GlobalCounts())


def tis_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance-sampling weights min(exp(old_logprobs - rollout_logprobs), cap), detached [B, T].

    The engine (e.g. vLLM) samples from pi_rollout, whose logprobs differ slightly from the trainer's pi_old
    for the same weights (kernels, precision). The PPO surrogate assumes samples from pi_old, so each token's
    loss is reweighted by pi_old / pi_rollout; truncating at `cap` (Yao et al. 2025, "Your efficient RL
    framework secretly brings you off-policy RL training"; they use 2) bounds the variance that rare tokens
    with a tiny engine probability would add, at the cost of a small bias.
    """
    if not cap > 0:
        raise ValueError(f"tis cap must be > 0, got {cap}")
    diff = (old_logprobs - rollout_logprobs).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return diff.exp().clamp(max=cap)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = 3.0,
    agg_mode: str = "token-mean",
    counts: GlobalCounts | None = None,
    rollout_logprobs: torch.Tensor | None = None,
    tis_cap: float = 2.0,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate PPO loss (to minimize) with clip-higher, dual clip and truncated IS.

    Per token, with r = exp(logprobs - old_logprobs) and advantage A:
        loss = max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))            (PPO; clip-higher: DAPO)
        if A < 0 and dual_clip = c:  loss = min(loss, -A * c)                      (dual clip, Ye et al. 2020)
        if rollout_logprobs is given: loss *= min(exp(old_logprobs - rollout_logprobs), tis_cap)   (TIS)
    then aggregated with `agg_mode` / `counts`. clip_high None means clip_low (symmetric PPO). The dual clip
    bounds the loss of a negative-advantage token whose ratio exploded (r > c), where plain PPO is unbounded.

    logprobs [B, T] (with grad), old_logprobs / rollout_logprobs [B, T] (no grad needed), advantages [B] or
    [B, T], response_mask [B, T], entropy [B, T] (optional, only logged). Returns (loss 0-dim, metrics):
    pg_loss, clip_frac (= clip_frac_low + clip_frac_high: tokens whose gradient the clip removed),
    clip_frac_low (A < 0, r < 1 - clip_low), clip_frac_high (A > 0, r > 1 + clip_high), dual_clip_frac
    (A < 0, r > c), approx_kl (mean of (r - 1) - log r, an estimate of KL(pi_old || pi_theta)), ratio_mean,
    and with TIS tis_weight_mean, tis_clip_frac (weights at the cap); with entropy, entropy (token mean).
    """
    clip_high = clip_low if clip_high is None else clip_high
    if not 0 <= clip_low < 1 or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (or None to disable), got {dual_clip}")
    if logprobs.shape != old_logprobs.shape or logprobs.shape != response_mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must have the same [B, T] shape"
        )
    mask = response_mask != 0
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    adv = advantages.to(dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    adv = _masked(adv.expand_as(logprobs), mask)

    log_ratio = _masked(logprobs.to(dtype) - old_logprobs.to(dtype), mask)
    ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    metrics: dict[str, torch.Tensor] = {}
    neg = adv < 0
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual = neg & (loss > bound)
        loss = torch.where(dual, bound, loss)
        metrics["dual_clip_frac"] = _token_mean_metric(dual.to(dtype), mask)
    if rollout_logprobs is not None:
        if rollout_logprobs.shape != logprobs.shape:
            raise ValueError(f"rollout_logprobs {tuple(rollout_logprobs.shape)} != {tuple(logprobs.shape)}")
        weights = _masked(tis_weights(old_logprobs.to(dtype), rollout_logprobs.to(dtype), tis_cap), mask)
        loss = loss * weights
        metrics["tis_weight_mean"] = _token_mean_metric(weights, mask)
        metrics["tis_clip_frac"] = _token_mean_metric((weights >= tis_cap).to(dtype), mask)

    pg_loss = aggregate(loss, mask, agg_mode, counts)
    with torch.no_grad():
        low = neg & (ratio < 1 - clip_low)
        high = (adv > 0) & (ratio > 1 + clip_high)
        metrics["pg_loss"] = pg_loss.detach()
        metrics["clip_frac_low"] = _token_mean_metric(low.to(dtype), mask)
        metrics["clip_frac_high"] = _token_mean_metric(high.to(dtype), mask)
        metrics["clip_frac"] = _token_mean_metric((low | high).to(dtype), mask)
        metrics["approx_kl"] = _token_mean_metric(ratio - 1 - log_ratio, mask)
        metrics["ratio_mean"] = _token_mean_metric(ratio, mask)
        if entropy is not None:
            metrics["entropy"] = _token_mean_metric(entropy.to(dtype), mask)
    return pg_loss, metrics


def _log_ratio(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log_r = logprobs - ref_logprobs, [B, T]. Unbiased for KL(pi || ref), high variance, can be < 0."""
    return _log_ratio(logprobs, ref_logprobs)


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * log_r**2, [B, T]. Biased, low variance, >= 0 (its gradient is that of the reverse KL)."""
    return 0.5 * _log_ratio(logprobs, ref_logprobs).square()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(-log_r) - 1 + log_r = ref/pi - 1 - log(ref/pi), [B, T] (Schulman's low-variance estimator).

    Unbiased for KL(pi || ref) and >= 0. log_r is clamped to +-LOG_RATIO_CLAMP and k3 to K3_CLAMP (as verl's
    "low_var_kl"): beyond the clamp the token contributes a constant and no gradient.
    """
    log_r = _log_ratio(logprobs, ref_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return ((-log_r).exp() - 1 + log_r).clamp(max=K3_CLAMP)


KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def get_kl_estimator(name: str) -> KLEstimator:
    """The KL estimator registered under `name`; ConfigError naming the choices when there is none."""
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown KL estimator {name!r}; choose one of {', '.join(KL_ESTIMATORS)}"
        ) from None


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    estimator: str = "k3",
    agg_mode: str = "token-mean",
    counts: GlobalCounts | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL(pi_theta || pi_ref) as a loss term (the trainer adds kl_coef * it to the policy loss).

    logprobs [B, T] (with grad), ref_logprobs [B, T], response_mask [B, T]. Returns (loss 0-dim,
    {"kl": detached token mean of the chosen estimator}).
    """
    fn = get_kl_estimator(estimator)
    mask = response_mask != 0
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    # Masked positions are zeroed before the estimator, so garbage there cannot turn into NaN gradients.
    per_token = fn(_masked(logprobs.to(dtype), mask), _masked(ref_logprobs.to(dtype), mask))
    loss = aggregate(per_token, mask, agg_mode, counts)
    return loss, {"kl": _token_mean_metric(per_token, mask)}
