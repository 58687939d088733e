"""Checks on what the reasoning model returns: a question as strict JSON, and a refined reasoning.

Every problem raises `InvalidOutput(reason, detail)`: `reason` is one of `OUTPUT_PROBLEMS` (the stable
names counted in the manifest), `detail` a sentence that goes back to the model in the repair prompt.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from longrl.data.schema import LETTERS, released_row
from longrl.errors import DataError

NUM_OPTIONS = 4
# Slack for timestamps past the end: captions label clip ends rounded to a tenth of a second.
TIMESTAMP_SLACK_S = 1.0

OUTPUT_PROBLEMS = (
    "invalid_json",  # not a JSON object (or no JSON at all)
    "missing_field",  # a required key is absent or empty
    "bad_options",  # not a list of four non-empty texts
    "duplicate_options",  # two options say the same
    "answer_not_in_options",  # the answer is not a letter of the options
    "empty_reasoning",  # no reasoning
    "no_timestamps",  # the reasoning cites no timestamp
    "timestamp_outside_video",  # a cited timestamp lies past the end of the video
    "wrong_category",  # a different category than asked for
    "not_writable",  # the question would not read back from the released schema
    "contradicts_answer",  # (refine) the reasoning concludes another option
    "not_concise",  # (refine) the rewrite is longer than the original
)


class InvalidOutput(Exception):
    """A model reply that cannot be used: `reason` in OUTPUT_PROBLEMS, `detail` one sentence for the model."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in OUTPUT_PROBLEMS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class QuestionDraft:
    """A validated question: option texts (no letters), the answer letter, the reasoning, the category."""

    question: str
    options: list[str]
    answer: str
    reasoning: str
    category: str
    timestamps_s: list[float]


_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```$", re.DOTALL)

# Category names a model may write for each key of prompts.CATEGORIES.
_CATEGORY_ALIASES = {
    "temporal": "temporal",
    "goal": "goal",
    "goal & purpose": "goal",
    "goal and purpose": "goal",
    "purpose": "goal",
    "spatial": "spatial",
    "plot": "plot",
    "plot & narrative": "plot",
    "plot and narrative": "plot",
    "narrative": "plot",
}

# Timestamps: "H:MM:SS", "MM:SS" (optionally ".s"), and seconds "12 s", "12.5s", "12 seconds", "10-20 s".
_CLOCK = re.compile(r"(?<![\d:.])(\d{1,2}):([0-5]\d)(?::([0-5]\d))?(\.\d+)?(?![\d:])")
_SECONDS_RANGE = re.compile(
    r"(?<![\w.:])(\d+(?:\.\d+)?)\s*(?:-|–|—|to)\s*(\d+(?:\.\d+)?)\s*(?:s|secs?|seconds?)\b", re.IGNORECASE
)
_SECONDS = re.compile(r"(?<![\w.:])(\d+(?:\.\d+)?)\s*(?:s|secs?|seconds?)\b", re.IGNORECASE)
_ANSWER_LETTER = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Za-z])[.):]?)\s*$")
_OPTION_MARK = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s+")
# "the answer is B", "Answer: (B)", "the correct option is B" (the last one in a text is its conclusion);
# "option B is wrong" is not a conclusion.
_CONCLUSION = re.compile(
    r"\b(?:answer|correct\s+(?:option|choice))\s*(?:is|:|=)\s*(?:option\s+)?\(?([A-D])\)?(?![A-Za-z])",
    re.IGNORECASE,
)


def _clean(text: str) -> str:
    return " ".join(text.split())


def find_timestamps(text: str) -> list[float]:
    """Every timestamp cited in `text`, in seconds, in order of appearance (see the patterns above)."""
    found: list[tuple[int, float]] = []
    taken: list[tuple[int, int]] = []
    for m in _CLOCK.finditer(text):
        a, b, c, frac = m.group(1), m.group(2), m.group(3), m.group(4)
        seconds = int(a) * 3600 + int(b) * 60 + int(c) if c is not None else int(a) * 60 + int(b)
        found.append((m.start(), seconds + (float(frac) if frac else 0.0)))
        taken.append(m.span())
    for m in _SECONDS_RANGE.finditer(text):
        found += [(m.start(1), float(m.group(1))), (m.start(2), float(m.group(2)))]
        taken.append(m.span())
    for m in _SECONDS.finditer(text):
        if not any(s <= m.start() < e for s, e in taken):
            found.append((m.start(), float(m.group(1))))
    return [seconds for _, seconds in sorted(found)]


def parse_json_object(text: str) -> dict[str, Any]:
    """The reply as a JSON object: the whole text, or the inside of one ``` fence around it."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as err:
        raise InvalidOutput(
            "invalid_json", f"the reply is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    if not isinstance(value, dict):
        raise InvalidOutput("invalid_json", f"the reply must be a JSON object, not a {type(value).__name__}")
    return value


def _text_field(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidOutput("missing_field", f'the field "{key}" is missing or empty')
    if not isinstance(value, str):
        raise InvalidOutput("missing_field", f'the field "{key}" must be a string')
    return value.strip()


def _options(obj: dict[str, Any]) -> list[str]:
    value = obj.get("options")
    if value is None:
        raise InvalidOutput("missing_field", 'the field "options" is missing')
    if isinstance(value, dict):  # {"A": "...", "B": "..."}: letters as keys, in order
        if list(value) != list(LETTERS[: len(value)]):
            raise InvalidOutput("bad_options", '"options" must be a list of four texts')
        value = list(value.values())
    if not isinstance(value, list) or len(value) != NUM_OPTIONS:
        n = len(value) if isinstance(value, list) else type(value).__name__
        raise InvalidOutput(
            "bad_options", f'"options" must be a list of exactly {NUM_OPTIONS} texts, got {n}'
        )
    texts = []
    for i, option in enumerate(value):
        if not isinstance(option, str) or not option.strip():
            raise InvalidOutput("bad_options", f"option {LETTERS[i]} is empty or not a text")
        text = _clean(option)
        mark = _OPTION_MARK.match(text)
        if mark and (mark.group(1) or mark.group(2)) == LETTERS[i]:
            text = text[mark.end() :]  # "B. a dog" written for option B: keep "a dog"
        if not text:
            raise InvalidOutput("bad_options", f"option {LETTERS[i]} is empty")
        texts.append(text)
    seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        key = text.casefold().rstrip(".")
        if key in seen:
            raise InvalidOutput(
                "duplicate_options", f"options {LETTERS[seen[key]]} and {LETTERS[i]} are the same ({text!r})"
            )
        seen[key] = i
    return texts


def _answer_letter(obj: dict[str, Any], options: list[str]) -> str:
    value = obj.get("answer")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidOutput("missing_field", 'the field "answer" is missing or empty')
    letters = LETTERS[: len(options)]
    m = _ANSWER_LETTER.match(str(value))
    letter = (m.group(1) or m.group(2)).upper() if m else None
    if letter is None or letter not in letters:
        raise InvalidOutput(
            "answer_not_in_options",
            f'"answer" must be one of the letters {", ".join(letters)}, got {value!r}',
        )
    return letter


def check_reasoning(reasoning: str, duration_s: float) -> list[float]:
    """The timestamps a reasoning cites; InvalidOutput when it is empty, cites none, or one past the end."""
    if not reasoning.strip():
        raise InvalidOutput("empty_reasoning", "the reasoning is empty")
    stamps = find_timestamps(reasoning)
    if not stamps:
        raise InvalidOutput(
            "no_timestamps", "the reasoning must cite the timestamps (MM:SS) of the captions it uses"
        )
    late = [t for t in stamps if t > duration_s + TIMESTAMP_SLACK_S]
    if late:
        raise InvalidOutput(
            "timestamp_outside_video",
            f"the reasoning cites {late[0]:.1f} s but the video ends at {duration_s:.1f} s",
        )
    return stamps


def _strip_think(text: str) -> str:
    return re.sub(r"</?think>", "", text).strip()


def validate_question(text: str, *, category: str, duration_s: float) -> QuestionDraft:
    """Parse and check one question reply (see OUTPUT_PROBLEMS); `category` is the one asked for."""
    obj = parse_json_object(text)
    question = _clean(_text_field(obj, "question"))
    options = _options(obj)
    answer = _answer_letter(obj, options)
    raw_reasoning = obj.get("reasoning")
    if raw_reasoning is None or not isinstance(raw_reasoning, str) or not raw_reasoning.strip():
        raise InvalidOutput("empty_reasoning", 'the field "reasoning" is missing or empty')
    reasoning = _strip_think(raw_reasoning)
    stamps = check_reasoning(reasoning, duration_s)
    written = obj.get("category")
    if written is not None:
        name = _CATEGORY_ALIASES.get(_clean(str(written)).casefold())
        if name != category:
            raise InvalidOutput("wrong_category", f'"category" must be "{category}", got {written!r}')
    try:
        released_row(problem_id=0, question=question, options=options, answer=answer, video="v.mp4")
    except DataError as err:
        raise InvalidOutput("not_writable", str(err).split(": ", 1)[-1]) from None
    return QuestionDraft(question, options, answer, reasoning, category, stamps)


def validate_refined(text: str, *, answer: str, original: str, duration_s: float) -> str:
    """The refined reasoning of one reply; InvalidOutput when it is not JSON with a usable "reasoning", cites
    no or out-of-range timestamps, concludes another option than `answer`, or is longer than `original`."""
    obj = parse_json_object(text)
    value = obj.get("reasoning")
    if not isinstance(value, str) or not value.strip():
        raise InvalidOutput("empty_reasoning", 'the field "reasoning" is missing or empty')
    reasoning = _strip_think(value)
    check_reasoning(reasoning, duration_s)
    concluded = [m.group(1).upper() for m in _CONCLUSION.finditer(reasoning)]
    if concluded and concluded[-1] != answer:
        raise InvalidOutput("contradicts_answer", f"the reasoning concludes {concluded[-1]}, not {answer}")
    if len(reasoning) > len(original):
        raise InvalidOutput("not_concise", "the rewritten reasoning is longer than the original")
    return reasoning
