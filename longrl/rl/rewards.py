"""Rule-based rewards for GRPO: format, accuracy, an optional custom reward, and their weighted total.

Per response (floats, 0 or 1 for the built-in ones):
- format:   1 when the response is exactly `<think>T</think><answer>A</answer>` (see `is_well_formed`).
- accuracy: 1 when the answer matches the gold answer. Multiple choice: the parsed option letter equals the
  gold letter (`parse_choice`). Open-ended: normalized exact match or numeric match (`match_open_ended`).
  The answer is read from the answer tags even when the format is broken (the last `<answer>` wins), so
  format and accuracy stay separate signals; without any answer tag accuracy is 0 (unless
  `require_answer_tag=False`).
- custom:   `RewardConfig.custom = "module:function"` (or "path/to/file.py:function"), called as
  `fn(response=..., answer=..., options=..., problem_type=...)` and returning a number; accept `**kwargs`
  for the arguments you ignore.
total = format_weight * format + accuracy_weight * accuracy (+ custom_weight * custom).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from longrl.errors import ConfigError, DataError
from longrl.rl.answer_parsing import extract_answer, is_well_formed, match_open_ended, parse_choice

MULTIPLE_CHOICE_TYPES = frozenset({"multiple_choice", "multi_choice", "mc", "choice"})
OPEN_ENDED_TYPES = frozenset({"open_ended", "open", "free_form", "numerical", "numeric", "regression", "ocr"})


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


def is_multiple_choice(problem_type: str | None, options: Sequence[str] | None) -> bool:
    """Multiple choice or open-ended: from `problem_type` ("multiple choice", "open-ended", ... any case,
    spaces/hyphens as underscores), or, when it is None, from whether there are options.
    DataError for an unknown problem_type.
    """
    if problem_type is None:
        return bool(options)
    key = re.sub(r"[\s\-]+", "_", problem_type.strip().lower())
    if key in MULTIPLE_CHOICE_TYPES:
        return True
    if key in OPEN_ENDED_TYPES:
        return False
    raise DataError(f"unknown problem_type {problem_type!r}; use 'multiple choice' or 'open-ended'")


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
    problem_type: str | None = None,
    *,
    config: RewardConfig | None = None,
) -> float:
    """1.0 when the response's answer matches the gold `answer`, else 0.0 (rules in the module docstring).

    options: the option texts (A, B, ...) of a multiple-choice question, or None.
    """
    config = config or RewardConfig()
    predicted = extract_answer(response, require_tag=config.require_answer_tag)
    if is_multiple_choice(problem_type, options):
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
    value = fn(**kwargs)
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
    problem_types: Sequence[str | None] | None = None,
    config: RewardConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Reward components for a batch of N responses, each a float32 tensor [N] (CPU).

    answers[i], options[i], problem_types[i] describe the question that responses[i] answers (repeat them
    for the G rollouts of a prompt). Keys: "format", "accuracy", "custom" (only when configured), "total".
    """
    config = config or RewardConfig()
    n = len(responses)
    options = list(options) if options is not None else [None] * n
    problem_types = list(problem_types) if problem_types is not None else [None] * n
    if not len(answers) == len(options) == len(problem_types) == n:
        raise ValueError(
            f"{n} responses but {len(answers)} answers, {len(options)} options, {len(problem_types)} problem_types"
        )
    custom = load_custom_reward(config.custom) if config.custom is not None else None
    parts: dict[str, list[float]] = {"format": [], "accuracy": []}
    if custom is not None:
        parts["custom"] = []
    for response, answer, opts, ptype in zip(responses, answers, options, problem_types, strict=True):
        parts["format"].append(format_reward(response))
        parts["accuracy"].append(accuracy_reward(response, answer, opts, ptype, config=config))
        if custom is not None:
            parts["custom"].append(
                _custom_value(
                    custom, config.custom, response=response, answer=answer, options=opts, problem_type=ptype
                )
            )
    out = {name: torch.tensor(values, dtype=torch.float32) for name, values in parts.items()}
    total = config.format_weight * out["format"] + config.accuracy_weight * out["accuracy"]
    if custom is not None:
        total = total + config.custom_weight * out["custom"]
    out["total"] = total
    return out
