"""Reward parser and rewards on tables of tricky responses (expected values written by hand, exact).

Options used throughout: A "a red car", B "A blue truck", C "C. green bike" (label in the option text),
D "the dog"; the gold answer is B unless a row says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longrl.data.schema import Example
from longrl.errors import ConfigError, DataError
from longrl.rl.answer_parsing import (
    extract_answer,
    is_well_formed,
    match_open_ended,
    normalize_text,
    parse_choice,
    parse_number,
)
from longrl.rl.rewards import (
    RewardConfig,
    accuracy_reward,
    compute_rewards,
    format_reward,
    gold_choice,
    is_multiple_choice,
    load_custom_reward,
    resolve_answer_kind,
)

OPTS = ["a red car", "A blue truck", "C. green bike", "the dog"]

# (answer text inside the tags, letter parse_choice must return)
CHOICE_TABLE = [
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("[B]", "B"),
    ("B.", "B"),
    ("B)", "B"),
    ("B:", "B"),
    ("B: blue truck", "B"),
    ("B. A blue truck", "B"),
    ("(b) a blue truck", "B"),
    ("Answer: B", "B"),
    ("answer: b", "B"),
    ("The answer is B.", "B"),
    ("the answer is (b)", "B"),
    ("The correct option is B because the truck is blue", "B"),
    ("Option C", "C"),
    ("choice: (d)", "D"),
    ("I think B", "B"),  # "I" is the pronoun, not option I (and there is no option I anyway)
    ("I'm confident it's B", "B"),
    ("A is correct", "A"),
    ("**B**", "B"),  # markdown emphasis
    ("\u201cB\u201d", "B"),  # curly quotes
    ("\uff22", "B"),  # full-width B (NFKC)
    ("\uff08\uff22\uff09", "B"),  # full-width (B)
    ("\u200bB\u200b", "B"),  # zero-width spaces
    ("\u00a0B\u00a0\n", "B"),  # no-break spaces, newline
    ("A blue truck", "B"),  # option B's text, starting with the article "A"
    ("blue truck", "B"),
    ("BLUE TRUCK!", "B"),
    ("the dog", "D"),
    ("green bike", "C"),  # option text written with its own "C." label
    ("The answer is the dog.", "D"),
    ("Because the truck is blue", None),  # B inside a word does not count
    ("B2", None),
    ("Bb", None),
    ("A dog runs", None),  # article, not option A
    ("the answer is a cat", None),  # lowercase "a" followed by a word is the article
    ("b because", None),  # a lowercase letter outside the listed forms does not count
    ("A or B", None),  # several letters: ambiguous
    ("B, not C", None),
    ("Both A and B", None),
    ("B. red car", None),  # letter B but option A's text: contradiction
    ("E", None),  # not an option
    ("Z. zebra", None),
    ("\u0412", None),  # Cyrillic capital VE looks like B
    ("", None),
    ("   ", None),
    ("blue", None),  # part of an option's text is not the option
]


@pytest.mark.parametrize(("answer", "letter"), CHOICE_TABLE)
def test_parse_choice_table(answer, letter):
    assert parse_choice(answer, OPTS) == letter


def test_parse_choice_without_options():
    assert parse_choice("Z", None) == "Z"  # any letter allowed without options
    assert parse_choice("Z", OPTS) is None
    assert parse_choice("blue truck", None) is None  # no texts to match
    assert parse_choice(None, OPTS) is None
    # With 9+ options "I" is a real option: "I think B" then names both.
    nine = [f"o{i}" for i in range(9)]
    assert parse_choice("I", nine) == "I"
    assert parse_choice("I think B", nine) == "B"  # "I" + lowercase word is still read as the pronoun
    assert parse_choice("I and B", nine) is None


# (response, format reward, accuracy reward for gold B)
RESPONSE_TABLE = [
    ("<think>the truck is blue</think><answer>B</answer>", 1, 1),
    ("<think>x</think><answer>A</answer>", 1, 0),
    ("  <think>x</think>\n\n<answer> B </answer>\n", 1, 1),
    ("<think>x</think>\t<answer>B</answer>", 1, 1),
    ("<think>x</think>\u00a0<answer>B</answer>", 1, 1),  # unicode whitespace is whitespace
    ("<think>x</think><answer>B</answer><|im_end|>", 1, 1),
    ("<think>\u601d\u8003 \U0001f697</think><answer>B</answer>", 1, 1),  # unicode reasoning
    ("<think>x</think><answer>The answer is (B) a blue truck</answer>", 1, 1),
    ("<think>x</think><answer>Because</answer>", 1, 0),
    ("<think>x</think><answer>B</answer> extra words", 0, 1),  # text after </answer>: format 0 only
    ("<think>x</think><answer>B</answer>.", 0, 1),
    ("prefix <think>x</think><answer>B</answer>", 0, 1),
    ("<answer>B</answer>", 0, 1),  # no think
    ("<think></think><answer>B</answer>", 0, 1),  # empty think
    ("<think>x</think><answer></answer>", 0, 0),  # empty answer
    ("<think>x</think><answer>  </answer>", 0, 0),
    ("<think>x</think>B", 0, 0),  # no answer tag
    ("B", 0, 0),
    ("", 0, 0),
    ("<think>x</think><answer>B", 0, 0),  # unclosed
    ("<think>x</think><answer>B</answer><answer>C</answer>", 0, 0),  # two answers: the last (C) counts
    ("<think>x</think><answer>C</answer><answer>B</answer>", 0, 1),
    ("<think>x</think><answer>B</answer><answer>B</answer>", 0, 1),
    ("<think>a<think>b</think></think><answer>B</answer>", 0, 1),  # nested think: format 0
    ("<think>x</think><answer><answer>B</answer></answer>", 0, 0),  # nested answer
    ("<think>x</think><answer>A</answer> no wait <answer>B</answer>", 0, 1),  # broken format: last answer
    ("<Think>x</Think><answer>B</answer>", 0, 1),  # tags are case-sensitive
    ("<think>x</think><answer>B</answer><think>y</think>", 0, 1),
]


@pytest.mark.parametrize(("response", "fmt", "acc"), RESPONSE_TABLE)
def test_response_table(response, fmt, acc):
    assert format_reward(response) == fmt
    assert is_well_formed(response) == bool(fmt)
    assert accuracy_reward(response, "B", OPTS) == acc
    assert accuracy_reward(response, "<answer>B</answer>", OPTS, answer_kind="multiple_choice") == acc


def test_extract_answer():
    assert extract_answer("<think>x</think><answer> B. blue </answer>") == "B. blue"
    assert extract_answer("<think>x</think>B") is None
    assert extract_answer("<think>x</think> B ", require_tag=False) == "B"  # text after </think>
    assert extract_answer("just B", require_tag=False) == "just B"
    assert extract_answer("<think>x</think><answer></answer>", require_tag=False) is None
    assert (
        accuracy_reward("<think>x</think> B", "B", OPTS, config=RewardConfig(require_answer_tag=False)) == 1
    )


OPEN_TABLE = [
    ("Paris", "paris", True),
    ("The Eiffel Tower.", "eiffel tower", True),
    ("a cat", "The cat", True),  # articles removed
    ("cats", "cat", False),
    ("U.S.", "US", True),  # punctuation deleted
    ("3", "3.0", True),
    ("1,000", "1000", True),
    ("1000.5", "1000", False),  # outside rel_tol 1e-4
    ("three", "3", True),
    ("3 people", "3", True),
    ("3 or 4", "3", False),  # two numbers: no numeric answer
    ("4", "3", False),
    ("-2", "2", False),
    ("0.75", "3/4", True),
    ("12%", "12", True),
    ("", "3", False),
    (None, "x", False),
    ("...", "!!!", False),  # both normalize to "": not a match
]


@pytest.mark.parametrize(("answer", "gold", "ok"), OPEN_TABLE)
def test_open_ended_table(answer, gold, ok):
    assert match_open_ended(answer, gold) is ok


def test_open_ended_reward_and_tolerance():
    response = "<think>x</think><answer>10.4 seconds</answer>"
    assert accuracy_reward(response, "10", None, answer_kind="open_ended") == 0
    loose = RewardConfig(numeric_rel_tol=0.05)
    assert accuracy_reward(response, "10", None, answer_kind="open_ended", config=loose) == 1
    assert accuracy_reward(response, "<answer>10.4</answer>", None, answer_kind="open_ended") == 1
    assert accuracy_reward(response, "<answer>10.4</answer>", []) == 1  # [] options (as Example): open
    assert (
        accuracy_reward("<think>x</think><answer>Red car</answer>", "red car", None) == 1
    )  # no options: open


def test_text_helpers():
    assert normalize_text("  The  Quick, brown FOX!  ") == "quick brown fox"
    assert normalize_text("\uff21n apple") == "apple"  # full-width "An"
    assert parse_number("1e3") == 1000.0
    assert parse_number("mp4") is None
    assert parse_number("twenty") == 20.0
    assert parse_number("3:45") is None
    assert parse_number("1/0") is None


def test_answer_kind_and_gold():
    assert is_multiple_choice(None, "multiple_choice")
    assert not is_multiple_choice(OPTS, "open_ended")
    assert is_multiple_choice(OPTS) and not is_multiple_choice(None) and not is_multiple_choice([])
    assert resolve_answer_kind(OPTS) == "multiple_choice" and resolve_answer_kind([]) == "open_ended"
    # A LongVideo-Reason `problem_type` is a category, not an answer kind: refused, with the fix.
    for bad in ("temporal", "goal", "multiple choice", "Multiple_Choice"):
        with pytest.raises(DataError, match="unknown answer_kind .*category"):
            is_multiple_choice(OPTS, bad)
    assert gold_choice("<answer>B</answer>", OPTS) == "B"
    assert gold_choice("(C)", OPTS) == "C"
    assert gold_choice("the dog", OPTS) == "D"
    with pytest.raises(DataError, match="among 4 options"):
        gold_choice("F", OPTS)


def test_compute_rewards_batch_and_weights():
    responses = [
        "<think>x</think><answer>B</answer>",  # format 1, acc 1
        "<think>x</think><answer>A</answer>",  # 1, 0
        "B",  # 0, 0
        "<answer>42</answer>",  # 0, 1 (open-ended)
    ]
    answers = ["B", "B", "B", "42"]
    options = [OPTS, OPTS, OPTS, None]
    out = compute_rewards(
        responses, answers, options, config=RewardConfig(format_weight=0.5, accuracy_weight=2.0)
    )
    assert set(out) == {"format", "accuracy", "total"}
    assert out["format"].tolist() == [1, 1, 0, 0]
    assert out["accuracy"].tolist() == [1, 0, 0, 1]
    assert out["total"].tolist() == [2.5, 0.5, 0.0, 2.0]
    assert all(t.dtype == torch.float32 and t.shape == (4,) for t in out.values())
    assert compute_rewards([], [])["total"].shape == (0,)
    with pytest.raises(ValueError, match="answers"):
        compute_rewards(responses, answers[:2])
    with pytest.raises(ValueError, match="categories"):
        compute_rewards(responses, answers, options, categories=["goal"])


def _example(options: list[str], answer: str, category: str) -> Example:
    return Example(
        id="q",
        question="?",
        options=options,
        answer=answer,
        reasoning="",
        category=category,
        data_type="video",
        video=Path("/v/a.mp4"),
        video_rel="a.mp4",
    )


def test_compute_rewards_from_examples():
    # Released-schema categories ("goal", "temporal", ...) never decide the answer kind; the options do.
    examples = [_example(OPTS, "B", "goal"), _example([], "3 people", "temporal"), _example(OPTS, "C", "")]
    responses = [
        "<think>x</think><answer>B</answer>",  # MC, right
        "<think>x</think><answer>three</answer>",  # open-ended (options []), numeric match
        "<think>x</think><answer>B</answer>",  # MC, wrong (gold C)
    ]
    out = compute_rewards(
        responses,
        [ex.answer for ex in examples],
        [ex.options for ex in examples],
        categories=[ex.category for ex in examples],
    )
    assert out["format"].tolist() == [1, 1, 1]
    assert out["accuracy"].tolist() == [1, 1, 0]
    # answer_kinds overrides per row; None keeps the options' decision.
    response = ["<think>x</think><answer>Answer: B</answer>"] * 3
    out = compute_rewards(
        response, ["B"] * 3, [OPTS] * 3, answer_kinds=["multiple_choice", "open_ended", None]
    )
    assert out["accuracy"].tolist() == [1, 0, 1]  # open-ended: "answer b" is not "b"
    with pytest.raises(DataError, match="'plot'"):
        compute_rewards(response[:1], ["B"], [OPTS], answer_kinds=["plot"])


def test_custom_reward(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        "def length_bonus(response, answer, **kwargs):\n    return len(response) / 100\n"
        "def bad(**kwargs):\n    return 'high'\n"
        "def crash(response, **kwargs):\n    return 1 / 0 if response == 'boom' else 0.0\n"
        "def echo(answer_kind, category, **kwargs):\n"
        "    return {'multiple_choice': 1.0, 'open_ended': 2.0}[answer_kind] + len(category)\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = RewardConfig(custom="my_rewards_mod:length_bonus", custom_weight=10.0)
    out = compute_rewards(
        ["<think>x</think><answer>B</answer>", "ab"], ["B", "B"], [OPTS, OPTS], config=config
    )
    # len 34 -> 0.34, len 2 -> 0.02; total = format + accuracy + 10 * custom
    torch.testing.assert_close(out["custom"], torch.tensor([0.34, 0.02]))
    torch.testing.assert_close(out["total"], torch.tensor([2 + 3.4, 0.2]))
    by_path = load_custom_reward(f"{tmp_path / 'my_rewards_mod.py'}:length_bonus")
    assert by_path(response="abcd", answer="") == 0.04
    with pytest.raises(ConfigError, match="finite number"):
        compute_rewards(["x"], ["B"], [OPTS], config=RewardConfig(custom="my_rewards_mod:bad"))
    # The custom reward gets the resolved answer_kind and the category ("" when not given).
    echo = RewardConfig(custom="my_rewards_mod:echo")
    out = compute_rewards(["x", "x"], ["B", "3"], [OPTS, []], categories=["plot", "goal"], config=echo)
    assert out["custom"].tolist() == [5.0, 6.0]
    out = compute_rewards(["x"], ["B"], [OPTS], answer_kinds=["open_ended"], config=echo)
    assert out["custom"].tolist() == [2.0]
    # An exception inside the user's function: one-line ConfigError naming the spec, chained to the cause.
    crash = RewardConfig(custom="my_rewards_mod:crash")
    assert compute_rewards(["ok"], ["B"], [OPTS], config=crash)["custom"].tolist() == [0.0]
    with pytest.raises(ConfigError) as info:
        compute_rewards(["ok", "boom"], ["B", "B"], [OPTS, OPTS], config=crash)
    assert (
        str(info.value) == "custom reward 'my_rewards_mod:crash' raised ZeroDivisionError: division by zero"
    )
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "expected 'module:function'"),
        ("longrl_no_such_module_xyz:fn", "cannot import 'longrl_no_such_module_xyz'"),
        ("/no/such/file.py:fn", "cannot import"),
        ("math:no_such_fn", "has no attribute 'no_such_fn'"),
        ("math:pi", "is a float, not a function"),
        ("math:", "expected 'module:function'"),
    ],
)
def test_custom_reward_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_custom_reward(spec)
    with pytest.raises(ConfigError):
        RewardConfig(custom=spec)  # caught when the config is built


def test_reward_config_validation():
    with pytest.raises(ConfigError, match="format_weight"):
        RewardConfig(format_weight=float("nan"))
    with pytest.raises(ConfigError, match="accuracy_weight"):
        RewardConfig(accuracy_weight="1")
    with pytest.raises(ConfigError, match=">= 0"):
        RewardConfig(numeric_abs_tol=-1.0)
