"""Eval scoring against hand-computed values: Wilson intervals (textbook values), unbiased pass@k (binomials
worked out by hand), per-response scoring (the RL reward parser), and the breakdowns of hand-made records."""

from __future__ import annotations

import math

import pytest

from longrl.eval.items import duration_bucket
from longrl.eval.scoring import (
    paired_difference_interval,
    pass_at_k,
    pass_k_values,
    score_response,
    summarize,
    summarize_cell,
    wilson_interval,
)
from longrl.rl.rewards import RewardConfig

TOL = 1e-4  # the published Wilson bounds are given to 4 decimals


def test_paired_difference_interval_by_hand():
    # differences 0, 1, 0, 1, -1: mean 0.2, squared deviations 0.04 + 0.64 + 0.04 + 0.64 + 1.44 = 2.8,
    # sample variance 2.8 / 4 = 0.7, half-width 1.959964 * sqrt(0.7 / 5) = 0.733351.
    mean, lo, hi = paired_difference_interval([1, 0, 1, 0, 1], [1, 1, 1, 1, 0])
    assert mean == pytest.approx(0.2, abs=1e-12)
    assert (lo, hi) == pytest.approx((0.2 - 0.733351, 0.2 + 0.733351), abs=1e-6)


def test_paired_interval_excludes_zero_where_the_wilson_intervals_overlap():
    """Items both scorings get right (or wrong) carry no difference: 90 shared right, 10 fixed by training."""
    before = [1.0] * 90 + [0.0] * 110
    after = [1.0] * 100 + [0.0] * 100
    mean, lo, hi = paired_difference_interval(before, after)
    assert mean == pytest.approx(0.05) and lo > 0
    assert wilson_interval(100, 200)[0] < wilson_interval(90, 200)[1]  # side by side they overlap


def test_paired_difference_interval_refuses_unpaired_or_single_items():
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference_interval([1, 0], [1])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference_interval([1], [0])


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        (3, 10, (0.1078, 0.6032)),  # Newcombe (1998) / any Wilson table
        (0, 6, (0.0, 0.3903)),
        (10, 10, (0.7225, 1.0)),
        (50, 100, (0.4038, 0.5962)),
    ],
)
def test_wilson_interval_matches_published_values(successes, n, expected):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(expected[0], abs=TOL)
    assert hi == pytest.approx(expected[1], abs=TOL)


def test_wilson_interval_formula_for_fractional_successes():
    # 2.5 of 4 (mean of k samples per item): p = 0.625, by the formula written out.
    z2 = 1.959963984540054**2
    p, n = 0.625, 4
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2) / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    assert wilson_interval(2.5, 4) == pytest.approx((center - half, center + half), abs=1e-12)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # pass@1 = c / n
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (4, 2, 2, 1 - 1 / 6),  # 1 - C(2,2)/C(4,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (4, 0, 4, 0.0),
        (4, 3, 2, 1.0),  # fewer than k wrong samples: some k-subset always has a correct one
        (8, 1, 8, 1.0),
    ],
)
def test_pass_at_k_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_k_values():
    assert pass_k_values(1) == [1]
    assert pass_k_values(4) == [1, 2, 4]
    assert pass_k_values(6) == [1, 2, 4, 6]


def test_score_response_uses_the_reward_parser():
    options = ["a red car", "a blue bus", "a green bike"]
    good = "<think>the bus is blue</think><answer>B</answer>"
    s = score_response(good, "B", options, "multiple_choice")
    assert (s.parsed, s.correct, s.format_ok) == ("B", True, True)
    # The option's text names the letter; the broken format still gets its answer read.
    s = score_response("<answer>a green bike</answer>", "B", options, "multiple_choice")
    assert (s.parsed, s.correct, s.format_ok) == ("C", False, False)
    # No answer tag: nothing parsed, unless the tag is not required.
    s = score_response("B", "B", options, "multiple_choice")
    assert (s.parsed, s.correct) == (None, False)
    s = score_response("B", "B", options, "multiple_choice", RewardConfig(require_answer_tag=False))
    assert (s.parsed, s.correct) == ("B", True)
    # Open-ended: normalized exact match and numbers.
    s = score_response("<think>t</think><answer>The Dog.</answer>", "dog", [], "open_ended")
    assert (s.parsed, s.correct, s.format_ok) == ("The Dog.", True, True)
    s = score_response("<think>t</think><answer>3</answer>", "three", [], "open_ended")
    assert s.correct
    s = score_response("<think>t</think><answer>cat</answer>", "dog", [], "open_ended")
    assert not s.correct


def _record(rid, category, duration, correct, format_ok=None, error=None):
    return {
        "id": rid,
        "category": category,
        "duration": duration,
        "correct": [] if error else correct,
        "format_ok": [] if error else (format_ok or [True] * len(correct)),
        "error": error,
    }


def test_summarize_hand_made_records_k1():
    records = [
        _record("1", "plot", "short", [True]),
        _record("2", "plot", "short", [False], [False]),
        _record("3", "plot", "long", [True]),
        _record("4", "goal", "long", [True]),
        _record("5", "goal", "medium", [False]),
        _record("6", "goal", "long", [], error="video broken"),
    ]
    m = summarize(records, samples=1)
    assert m["n"] == 5 and m["errors"] == 1
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["ci95"] == pytest.approx(list(wilson_interval(3, 5)))
    assert m["format_rate"] == pytest.approx(4 / 5)
    assert "pass_at_k" not in m
    assert list(m["per_category"]) == ["goal", "plot"]
    assert m["per_category"]["plot"]["accuracy"] == pytest.approx(2 / 3)
    assert m["per_category"]["plot"]["n"] == 3
    assert m["per_category"]["goal"]["accuracy"] == pytest.approx(1 / 2)
    assert m["per_category"]["goal"]["errors"] == 1
    assert list(m["per_duration"]) == ["short", "medium", "long"]
    assert m["per_duration"]["long"]["accuracy"] == pytest.approx(1.0)
    assert m["per_duration"]["long"]["n"] == 2
    assert m["per_duration"]["medium"]["accuracy"] == 0.0


def test_summarize_k_samples_mean_accuracy_and_pass_at_k():
    records = [
        _record("1", "a", "short", [True, False, False, False]),  # c = 1
        _record("2", "a", "short", [True, True, False, False]),  # c = 2
        _record("3", "a", "short", [False, False, False, False]),  # c = 0
    ]
    m = summarize_cell(records, samples=4)
    assert m["accuracy"] == pytest.approx((0.25 + 0.5 + 0.0) / 3)
    assert m["pass_at_k"]["1"] == pytest.approx(m["accuracy"])
    assert m["pass_at_k"]["2"] == pytest.approx((0.5 + 5 / 6 + 0.0) / 3)
    assert m["pass_at_k"]["4"] == pytest.approx((1 + 1 + 0) / 3)


def test_empty_cell_has_no_accuracy():
    m = summarize_cell([_record("x", "a", "short", [], error="bad")], samples=1)
    assert m == {"n": 0, "errors": 1, "accuracy": None, "ci95": None, "format_rate": None, "correct": 0.0}


def test_duration_bucket_edges():
    assert duration_bucket(None) == "unknown"
    assert duration_bucket(119.9) == "short"
    assert duration_bucket(120.0) == "medium"
    assert duration_bucket(900.0) == "medium"
    assert duration_bucket(900.1) == "long"
