"""Scoring: each response with the RL reward's own parser, then accuracy with 95% intervals per breakdown.

- Correct: `longrl.rl.rewards.accuracy_reward` (the parser training is rewarded with), the answer kind
  from the item (multiple choice: the option letter; open-ended: numeric or normalized exact match).
  Format compliance: `format_reward` (exactly `<think>..</think><answer>..</answer>`).
- Accuracy of a cell (overall, one category, one duration bucket) = mean over its items of the fraction of
  the item's k samples that are correct (k = 1: plain accuracy). Items whose video could not be decoded
  have no responses: they are counted in `errors`, not in `n` or the accuracy.
- 95% interval: Wilson score interval over the cell's n items with p = the accuracy (exact for k = 1; for
  k > 1 it treats each item's mean as one observation, a slight overstatement of the uncertainty).
- pass@j for j in 1, 2, 4, ..., k (and k): the unbiased estimator 1 - C(k-c, j) / C(k, j) per item (Chen et
  al. 2021, HumanEval), averaged over items; pass@1 equals the accuracy.
- Two scorings of the same items (a model before and after training): `paired_difference_interval`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from longrl.eval.items import DURATION_BUCKETS
from longrl.rl.answer_parsing import extract_answer, parse_choice
from longrl.rl.rewards import MULTIPLE_CHOICE, RewardConfig, accuracy_reward, format_reward

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class ScoredResponse:
    """One response: the answer it gives (an option letter, or the free text; None when none), whether
    that answer is correct, and whether the response is in the trained format."""

    parsed: str | None
    correct: bool
    format_ok: bool


def score_response(
    response: str,
    answer: str,
    options: Sequence[str],
    answer_kind: str,
    config: RewardConfig | None = None,
) -> ScoredResponse:
    """Score one response against the gold `answer` (letter for multiple choice, text for open-ended)."""
    config = config or RewardConfig()
    extracted = extract_answer(response, require_tag=config.require_answer_tag)
    parsed = parse_choice(extracted, options) if answer_kind == MULTIPLE_CHOICE else extracted
    correct = accuracy_reward(response, answer, options, answer_kind=answer_kind, config=config) == 1.0
    return ScoredResponse(parsed=parsed, correct=correct, format_ok=format_reward(response) == 1.0)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for `successes` out of `n` (successes may be fractional). n >= 1."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return max(0.0, center - half), min(1.0, center + half)


def paired_difference_interval(
    before: Sequence[float], after: Sequence[float], z: float = Z95
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of after - before over items scored twice (item i in both lists) and its
    95% interval, mean +- z * sd / sqrt(n) with the sample sd of the per-item differences (the normal
    approximation of a paired t interval; for n in the hundreds the two agree to a few hundredths of a
    point). Pairing removes the spread between items that both scorings share, so the interval of the
    difference is narrower than the two accuracies' own intervals side by side. n >= 2."""
    if len(before) != len(after):
        raise ValueError(f"paired scores differ in length: {len(before)} before, {len(after)} after")
    n = len(before)
    if n < 2:
        raise ValueError(f"need at least 2 paired items, got {n}")
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of one item with `num_correct` of `num_samples` samples correct: 1 - C(n-c, k)/C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the large binomials.
    """
    n, c = num_samples, num_correct
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"need 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_k_values(samples: int) -> list[int]:
    """The j of the reported pass@j: 1, 2, 4, ... up to `samples`, and `samples` itself."""
    ks, j = [], 1
    while j < samples:
        ks.append(j)
        j *= 2
    return [*ks, samples]


def summarize_cell(records: Sequence[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Metrics of a set of prediction records (see `runner.prediction_record`) answered with k = `samples`.

    Keys: n (scored items), errors (items without responses), accuracy, ci95 [lo, hi], format_rate (over all
    scored responses), correct (sum of item accuracies); pass_at_k {"j": value} when samples > 1. Accuracy,
    ci95 and format_rate are None when n = 0.
    """
    scored = [r for r in records if not r.get("error") and r.get("correct")]
    errors = len(records) - len(scored)
    n = len(scored)
    cell: dict[str, Any] = {"n": n, "errors": errors}
    if n == 0:
        cell.update(accuracy=None, ci95=None, format_rate=None, correct=0.0)
        return cell
    per_item = [sum(r["correct"]) / len(r["correct"]) for r in scored]
    total = sum(per_item)
    formats = [f for r in scored for f in r["format_ok"]]
    cell.update(
        accuracy=total / n,
        ci95=list(wilson_interval(total, n)),
        format_rate=sum(formats) / len(formats),
        correct=total,
    )
    if samples > 1:
        cell["pass_at_k"] = {
            str(j): sum(pass_at_k(len(r["correct"]), sum(r["correct"]), j) for r in scored) / n
            for j in pass_k_values(samples)
        }
    return cell


def summarize(records: Sequence[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Overall metrics plus `per_category` and `per_duration` breakdowns (each a `summarize_cell`), every
    cell with its item counts. Categories are sorted by name, buckets short, medium, long, then others."""
    by_category: dict[str, list[dict]] = {}
    by_duration: dict[str, list[dict]] = {}
    for r in records:
        by_category.setdefault(r["category"], []).append(r)
        by_duration.setdefault(r["duration"], []).append(r)
    return {
        **summarize_cell(records, samples),
        "per_category": {c: summarize_cell(rs, samples) for c, rs in sorted(by_category.items())},
        "per_duration": {d: summarize_cell(by_duration[d], samples) for d in _bucket_order(by_duration)},
    }


def _bucket_order(buckets: dict[str, Any]) -> list[str]:
    rank = {b: i for i, b in enumerate(DURATION_BUCKETS)}
    return sorted(buckets, key=lambda b: (rank.get(b, len(rank)), b))
