"""Rule-based rewards for GRPO: format, accuracy, an optional custom reward, and their weighted total.

Per response (floats, 0 or 1 for the built-in ones):
- format:   1 when the response is exactly `<think>T</think><answer>A</answer>` (see `is_well_formed`).
- accuracy: 1 when the answer matches the gold answer. Multiple choice: the parsed option letter equals the
  gold letter (`parse_choice`). Open-ended: normalized exact match or numeric match (`match_open_ended`).
  The answer kind comes from the options: multiple choice when a question has options, open-ended when it
  has none (None or []), as `longrl.data.Example.options`. `answer_kind` ("multiple_choice" or
  "open_ended") overrides that. It is not the dataset's `problem_type` column: in LongVideo-Reason that is
  the question's category ("goal", "plot", "temporal", ...), passed as `category` and used only by custom
  rewards.
  The answer is read from the answer tags even when the format is broken (the last `<answer>` wins), so
  format and accuracy stay separate signals; without any answer tag accuracy is 0 (unless
  `require_answer_tag=False`).
- custom:   `RewardConfig.custom = "module:function"` (or "path/to/file.py:function"), called once per
  response as `fn(response=str, answer=str, options=list[str] | None, answer_kind="multiple_choice" |
  "open_ended", category=str)` (category "" when not given) and returning a finite number; accept
  `**kwargs` for the arguments you ignore. An exception it raises becomes a one-line ConfigError.
total = format_weight * format + accuracy_weight * accuracy (+ custom_weight * custom).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from longrl.errors import ConfigError, DataError
from longrl.rl.answer_parsing import extract_answer, is_well_formed, match_open_ended, parse_choice

MULTIPLE_CHOICE = "multiple_choice"
OPEN_ENDED = "open_ended"
ANSWER_KINDS = (MULTIPLE_CHOICE, OPEN_ENDED)


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward components and the answer-matching tolerances.

    Defaults: format and accuracy both weigh 1 (total in {0, 1, 2}, as Video-R1 / LongVILA-R1).
    numeric_rel_tol / numeric_abs_tol: open-ended numeric answers match when
    |answer - gold| <= max(rel_tol * max(|answer|, |gold|), abs_tol).
    """

    format_weight: float = 1.0
    accuracy_weight: float = 1.0
    custom: str | None = None
    custom_weight: float = 1.0
    numeric_rel_tol: float = 1e-4
    numeric_abs_tol: float = 1e-6
    require_answer_tag: bool = True

    def __post_init__(self) -> None:
        for name in (
            "format_weight",
            "accuracy_weight",
            "custom_weight",
            "numeric_rel_tol",
            "numeric_abs_tol",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"reward {name} must be a finite number, got {value!r}")
        if self.numeric_rel_tol < 0 or self.numeric_abs_tol < 0:
            raise ConfigError("reward numeric_rel_tol and numeric_abs_tol must be >= 0")
        if self.custom is not None:
            load_custom_reward(self.custom)  # fail at config time, not at the first step


def format_reward(response: str) -> float:
    """1.0 when the response is exactly `<think>T</think><answer>A</answer>` (whitespace around), else 0.0."""
    return 1.0 if is_well_formed(response) else 0.0


def resolve_answer_kind(options: Sequence[str] | None, answer_kind: str | None = None) -> str:
    """ "multiple_choice" or "open_ended": `answer_kind` when given, else from whether there are options.

    DataError for any other answer_kind (a category such as "temporal" is not an answer kind).
    """
    if answer_kind is None:
        return MULTIPLE_CHOICE if options else OPEN_ENDED
    if answer_kind not in ANSWER_KINDS:
        raise DataError(
            f"unknown answer_kind {answer_kind!r}; use 'multiple_choice' or 'open_ended' (or None to decide "
            "from the options); a question's category goes in `category`"
        )
    return answer_kind


def is_multiple_choice(options: Sequence[str] | None, answer_kind: str | None = None) -> bool:
    """True when the question is multiple choice (see `resolve_answer_kind`)."""
    return resolve_answer_kind(options, answer_kind) == MULTIPLE_CHOICE


def gold_choice(answer: str, options: Sequence[str] | None = None) -> str:
    """The gold option letter of a multiple-choice row: 'B', '(B)', '<answer>B</answer>', or an option's
    text. DataError when it names no option (or a letter past the last option)."""
    letter = parse_choice(extract_answer(answer, require_tag=False), options)
    if letter is None:
        n = "" if options is None else f" among {len(options)} options"
        raise DataError(f"gold answer {answer!r} names no option letter{n}")
    return letter


def accuracy_reward(
    response: str,
    answer: str,
    options: Sequence[str] | None = None,
    *,
    answer_kind: str | None = None,
    config: RewardConfig | None = None,
) -> float:
    """1.0 when the response's answer matches the gold `answer`, else 0.0 (rules in the module docstring).

    options: the option texts (A, B, ...) of a multiple-choice question; None or [] when open-ended.
    answer_kind: None (decide from the options), "multiple_choice" or "open_ended".
    """
    config = config or RewardConfig()
    predicted = extract_answer(response, require_tag=config.require_answer_tag)
    if is_multiple_choice(options, answer_kind):
        return 1.0 if parse_choice(predicted, options) == gold_choice(answer, options) else 0.0
    gold = extract_answer(answer, require_tag=False) or answer
    ok = match_open_ended(predicted, gold, rel_tol=config.numeric_rel_tol, abs_tol=config.numeric_abs_tol)
    return 1.0 if ok else 0.0


CustomReward = Callable[..., float]


@functools.cache
def load_custom_reward(spec: str) -> CustomReward:
    """The function named by "package.module:function" or "path/to/file.py:function".

    ConfigError (naming the spec and the fix) when the spec is malformed, the module cannot be imported,
    or the attribute is missing or not callable.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"custom reward {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no file {path}")
            module_spec = importlib.util.spec_from_file_location(f"_longrl_custom_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure is the user's module: say which, and why
        raise ConfigError(
            f"custom reward {spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e}); "
            "check the name and that its folder is on PYTHONPATH"
        ) from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"custom reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ConfigError(f"custom reward {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def _custom_value(fn: CustomReward, spec: str, **kwargs) -> float:
    try:
        value = fn(**kwargs)
    except Exception as e:  # the user's code: one line naming the spec, not a traceback mid-training
        raise ConfigError(f"custom reward {spec!r} raised {type(e).__name__}: {e}") from e
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ConfigError(f"custom reward {spec!r} returned {value!r}; it must return a finite number")
    return number


def compute_rewards(
    responses: Sequence[str],
    answers: Sequence[str],
    options: Sequence[Sequence[str] | None] | None = None,
    *,
    answer_kinds: Sequence[str | None] | None = None,
    categories: Sequence[str | None] | None = None,
    config: RewardConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Reward components for a batch of N responses, each a float32 tensor [N] (CPU).

    answers[i], options[i] (and answer_kinds[i], categories[i] when given) describe the question that
    responses[i] answers; repeat them for the G rollouts of a prompt. They map onto `longrl.data.Example`
    as answers=[ex.answer ...], options=[ex.options ...] ([] = open-ended), categories=[ex.category ...].
    answer_kinds: None per row (or no list) decides from the options; else "multiple_choice" / "open_ended".
    categories: passed to the custom reward only ("" when not given); they never change the answer kind.
    Keys: "format", "accuracy", "custom" (only when configured), "total".
    """
    config = config or RewardConfig()
    n = len(responses)
    options = list(options) if options is not None else [None] * n
    answer_kinds = list(answer_kinds) if answer_kinds is not None else [None] * n
    categories = list(categories) if categories is not None else [""] * n
    if not len(answers) == len(options) == len(answer_kinds) == len(categories) == n:
        raise ValueError(
            f"{n} responses but {len(answers)} answers, {len(options)} options, "
            f"{len(answer_kinds)} answer_kinds, {len(categories)} categories"
        )
    custom = load_custom_reward(config.custom) if config.custom is not None else None
    parts: dict[str, list[float]] = {"format": [], "accuracy": []}
    if custom is not None:
        parts["custom"] = []
    for response, answer, opts, kind, category in zip(
        responses, answers, options, answer_kinds, categories, strict=True
    ):
        kind = resolve_answer_kind(opts, kind)
        parts["format"].append(format_reward(response))
        parts["accuracy"].append(accuracy_reward(response, answer, opts, answer_kind=kind, config=config))
        if custom is not None:
            value = _custom_value(
                custom,
                config.custom,
                response=response,
                answer=answer,
                options=opts,
                answer_kind=kind,
                category=category or "",
            )
            parts["custom"].append(value)
    out = {name: torch.tensor(values, dtype=torch.float32) for name, values in parts.items()}
    total = config.format_weight * out["format"] + config.accuracy_weight * out["accuracy"]
    if custom is not None:
        total = total + config.custom_weight * out["custom"]
    out["total"] = total
    return out
