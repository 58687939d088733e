"""One dataset row -> one validated `Example`, and back to the released LongVideo-Reason schema.

Two input forms are accepted (the loader picks by key: `problem` -> released, `question` -> plain):

released LongVideo-Reason (as on the Hub, e.g. `test.jsonl` row 0):
    {"problem_id": 0, "problem": "What is ...?\\nA. ...\\nB. ...\\nC. ...\\nD. ...", "data_type": "video",
     "problem_type": "goal", "reasoning": "...", "videos": "longvila_videos/I_Q3ajyOrcI.mp4",
     "answer": "<answer>B</answer>"}
  The options live inside `problem`, one per line after the question. `problem_type` is the category
  (temporal / goal / plot / spatial ...), not "multiple choice". `videos` is a path or a list of one path.

plain multiple choice:
    {"id": "q1", "question": "...",
     "options": ["cat", "dog"] | {"A": "cat", "B": "dog"} | ["A. cat", "B. dog"],
     "answer": "B" | "dog", "video": "clips/1.mp4", "category": "spatial", "reasoning": "..."}

A row without options is open-ended: its answer is free text. Every way a row can be wrong raises
`RowProblem` with one of `BAD_ROW_REASONS`; the loader (dataset.py) counts or reports it.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longrl.errors import DataError

LETTERS = string.ascii_uppercase  # option i is LETTERS[i]; at most 26 options

# Stable names: they are the keys of the bad-row counts in the run summary.
BAD_ROW_REASONS = (
    "invalid_json",  # a line that is not JSON, or a row that is not a JSON object
    "missing_field",  # a required field is absent or null
    "bad_field",  # a field of the wrong type, or empty where text is needed
    "too_few_options",  # one option, or a letter answer with no options at all
    "duplicate_option_letter",  # the same option letter twice
    "bad_options",  # letters not A, B, C, ... in order, an empty option, more than 26
    "answer_not_in_options",  # the answer is neither an option letter nor an option's text
    "video_outside_root",  # the video path escapes --video-root (absolute, .., symlink out)
    "video_missing",  # the video file does not exist, is not a file, or cannot be read
)


class RowProblem(Exception):
    """Why one row was rejected: `reason` is one of BAD_ROW_REASONS, `detail` a short human sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in BAD_ROW_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Example:
    """One validated question about one video, as SFT, RL and eval consume it.

    options: option texts without their letters; option i has letter LETTERS[i]. Empty = open-ended.
    answer: the correct option's letter ("B") for multiple choice, the answer text when open-ended.
    category: `problem_type` of the released schema (`category` of the plain form); "" when absent.
    video: the resolved (absolute, symlink-free) path of the file, inside the video root.
    video_rel: the same video as a POSIX path relative to the video root (what a written row holds).
    raw: the row as read (not compared: two examples are equal when their content is).
    """

    id: str
    question: str
    options: list[str]
    answer: str
    reasoning: str
    category: str
    data_type: str
    video: Path
    video_rel: str
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.options)

    @property
    def answer_index(self) -> int | None:
        """0-based index of the correct option, None for open-ended questions."""
        return LETTERS.index(self.answer) if self.options else None

    @property
    def answer_text(self) -> str:
        """The correct option's text (multiple choice) or the answer itself (open-ended)."""
        return self.options[LETTERS.index(self.answer)] if self.options else self.answer


# ---------------------------------------------------------------------------------------------------------
# Options inside a problem text

# One option line: "A. x", "A) x", "A: x", "(A) x", "[A] x". Whitespace after the marker is required so that
# "A.M. schedule" or "B.C." at the start of a question line is not taken for an option.
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.):])(?:\s+(.*?))?\s*$")
_OPTIONS_HEADER = re.compile(r"^\s*(options|choices)\s*:?\s*$", re.IGNORECASE)


def _option_line(line: str) -> tuple[str, str] | None:
    m = _OPTION_LINE.match(line)
    if not m:
        return None
    return (m.group(1) or m.group(2) or m.group(3)), (m.group(4) or "")


def _clean(text: str) -> str:
    # Options are short labels: newlines or runs of spaces inside one carry no meaning and would break the
    # one-option-per-line layout of the released `problem` text.
    return " ".join(text.split())


def split_lettered_options(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a problem text into (question, [(letter, option text), ...]) without judging the letters.

    The option block is the last run of option lines (blank lines may sit between them) that contains an
    "A" line; it starts at that run's first "A" line, so option-looking lines earlier in the question
    (a quoted "A: hello") stay question text. A lone "Options:"/"Choices:" line right before the block is
    dropped; text after the block is kept as question text (appended on a new line). No block: ([]).
    """
    lines = text.splitlines()
    parsed = [_option_line(line) for line in lines]
    block: tuple[int, int] | None = None  # [start, end) line indices of the chosen block
    i = 0
    while i < len(lines):
        if parsed[i] is None:
            i += 1
            continue
        j, first_a = i, None
        while j < len(lines) and (parsed[j] is not None or not lines[j].strip()):
            if parsed[j] is not None and parsed[j][0] == "A" and first_a is None:
                first_a = j
            j += 1
        if first_a is not None:
            block = (first_a, j)
        i = j
    if block is None:
        return "\n".join(lines).strip(), []
    start, end = block
    head = lines[:start]
    if head and _OPTIONS_HEADER.match(head[-1]):
        head = head[:-1]
    question = "\n".join(head).strip()
    tail = "\n".join(lines[end:]).strip()
    if tail:
        question = f"{question}\n{tail}" if question else tail
    options = [(p[0], _clean(p[1])) for p in parsed[start:end] if p is not None]
    return question, options


def check_option_letters(letters: Sequence[str], where: str) -> None:
    """Raise RowProblem unless `letters` are A, B, C, ... in order (at least two, no repeats)."""
    seen = [x for i, x in enumerate(letters) if x in letters[:i]]
    if seen:
        raise RowProblem("duplicate_option_letter", f"option letter {seen[0]} appears twice in {where}")
    if len(letters) > len(LETTERS):
        raise RowProblem("bad_options", f"{len(letters)} options in {where}; at most 26 are supported")
    expected = list(LETTERS[: len(letters)])
    if list(letters) != expected:
        raise RowProblem(
            "bad_options", f"option letters {', '.join(letters)} in {where}; expected {', '.join(expected)}"
        )
    if len(letters) < 2:
        raise RowProblem("too_few_options", f"only {len(letters)} option in {where}; need at least 2")


def parse_problem(problem: str) -> tuple[str, list[str]]:
    """Released `problem` text -> (question, option texts in letter order); no options = open-ended.

    Raises RowProblem for an option block whose letters repeat, skip, or hold fewer than 2 options, or for an
    empty option or an empty question.
    """
    return _checked_problem(*split_lettered_options(problem))


def _checked_problem(question: str, lettered: list[tuple[str, str]]) -> tuple[str, list[str]]:
    if lettered:
        check_option_letters([letter for letter, _ in lettered], "the problem text")
        _check_option_texts([t for _, t in lettered])
    if not question:
        raise RowProblem("bad_field", "the problem has no question text before its options")
    return question, [t for _, t in lettered]


def _check_option_texts(texts: Sequence[str]) -> None:
    for letter, text in zip(LETTERS, texts, strict=False):  # len(texts) <= 26 is checked first
        if not text:
            raise RowProblem("bad_options", f"option {letter} is empty")


def format_problem(question: str, options: Sequence[str]) -> str:
    """The released `problem` text: the question, then one "A. text" line per option."""
    lines = [question.strip()] + [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Answers

_ANSWER_TAG = re.compile(r"^\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
# A letter alone, possibly dressed: "B", "(B)", "[B]", "B.", "B)", "B:".
_LETTER_ONLY = re.compile(r"^\s*(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])[.):]?)\s*$")
# A letter followed by its option text: "B. a dog", "(B) a dog", "B: a dog".
_LETTER_AND_TEXT = re.compile(r"^\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.):])\s+(.+?)\s*$", re.DOTALL)


def _norm(text: str) -> str:
    return _clean(text).casefold().rstrip(".")


def _letter_of(m: re.Match) -> str:
    return (m.group(1) or m.group(2) or m.group(3)).upper()


def unwrap_answer(value: Any) -> str:
    """The answer field as text: `<answer>X</answer>` -> "X", a number -> its text; else RowProblem."""
    if value is None:
        raise RowProblem("missing_field", "the answer is null")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowProblem("bad_field", f"the answer must be text, not {type(value).__name__}")
    text = str(value)
    m = _ANSWER_TAG.match(text)
    if m:
        text = m.group(1)
    text = text.strip()
    if not text:
        raise RowProblem("bad_field", "the answer is empty")
    return text


def resolve_answer(value: Any, options: Sequence[str]) -> str:
    """The answer field -> the correct option's letter (multiple choice) or the answer text (open-ended).

    Accepted for multiple choice: "B", "(B)", "B.", "<answer>B</answer>", "B. option text", the option text
    itself (case and spacing ignored; it must match exactly one option), or a lower-case letter "b" when no
    option's text is "b". An upper-case letter always means a letter.
    """
    text = unwrap_answer(value)
    letter_only = _LETTER_ONLY.match(text)
    raw_letter = (
        (letter_only.group(1) or letter_only.group(2) or letter_only.group(3)) if letter_only else None
    )
    letter = raw_letter.upper() if raw_letter else None
    upper = raw_letter is not None and raw_letter.isupper()
    if not options:
        if upper:
            raise RowProblem(
                "too_few_options", f"the answer {text!r} is an option letter but the row has no options"
            )
        return text
    letters = LETTERS[: len(options)]
    if upper:
        if letter in letters:
            return letter
        raise RowProblem("answer_not_in_options", f"answer {letter} is not among options A-{letters[-1]}")
    with_text = _LETTER_AND_TEXT.match(text)
    if with_text and _letter_of(with_text) in letters:
        picked = _letter_of(with_text)
        if _norm(with_text.group(4)) == _norm(options[letters.index(picked)]):
            return picked
    matches = [letters[i] for i, opt in enumerate(options) if _norm(opt) == _norm(text)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RowProblem("answer_not_in_options", f"answer text {_short(text)} matches options {matches}")
    if letter is not None and letter in letters:
        return letter
    raise RowProblem(
        "answer_not_in_options",
        f"answer {_short(text)} is neither a letter A-{letters[-1]} nor an option's text",
    )


def _short(text: str, limit: int = 60) -> str:
    text = _clean(text)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# ---------------------------------------------------------------------------------------------------------
# Video paths


def resolve_video(value: Any, video_root: Path, *, check_exists: bool = True) -> tuple[Path, str]:
    """A row's video path -> (resolved absolute path, POSIX path relative to the root).

    video_root must already be resolved (`Path.resolve()`). The file may not escape the root in any way: an
    absolute path elsewhere, `..` that climbs out, or a symlink (anywhere on the way) that points out are
    all judged on the fully resolved path. `check_exists` also requires a readable regular file.
    """
    if isinstance(value, list):
        if len(value) != 1:
            raise RowProblem(
                "bad_field" if value else "missing_field",
                f"videos holds {len(value)} paths; exactly one video per row is supported",
            )
        value = value[0]
    if value is None:
        raise RowProblem("missing_field", "the video path is null")
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise RowProblem("bad_field", f"the video path must be a non-empty string, got {_short(str(value))}")
    given = Path(value.strip())
    candidate = given if given.is_absolute() else video_root / given
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as err:  # symlink loop, unreadable component
        raise RowProblem("video_missing", f"video {_short(value)} cannot be resolved: {err}") from None
    if not resolved.is_relative_to(video_root):
        raise RowProblem(
            "video_outside_root", f"video {_short(value)} resolves outside the video root {video_root}"
        )
    if check_exists and not (resolved.is_file() and os.access(resolved, os.R_OK)):
        raise RowProblem("video_missing", f"video {_short(value)} is not a readable file under {video_root}")
    # Keep the name the data uses; only when `..` appears (which may cross a symlink) name the real file.
    if ".." in given.parts:
        rel = resolved.relative_to(video_root)
    elif given.is_absolute():
        lexical = Path(os.path.normpath(given))
        rel = (
            lexical.relative_to(video_root)
            if lexical.is_relative_to(video_root)
            else resolved.relative_to(video_root)
        )
    else:
        rel = Path(os.path.normpath(given))
    return resolved, rel.as_posix()


# ---------------------------------------------------------------------------------------------------------
# Rows -> Example


def _required(row: Mapping, key: str) -> Any:
    if row.get(key) is None:
        raise RowProblem("missing_field", f"field {key!r} is missing")
    return row[key]


def _first(row: Mapping, keys: Sequence[str]) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    raise RowProblem("missing_field", f"field {keys[0]!r} is missing")


def _text(row: Mapping, key: str, default: str = "") -> str:
    value = row.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise RowProblem("bad_field", f"field {key!r} must be a string, not {type(value).__name__}")
    return value


def _row_id(row: Mapping, keys: Sequence[str], index: int) -> str:
    for key in keys:
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            raise RowProblem("bad_field", f"field {key!r} must be a string or an integer")
        return str(value).strip()
    return str(index)  # rows without an id are named by their position in the file


_THINK_WRAPPED = re.compile(r"^\s*<think>(.*)</think>\s*$", re.DOTALL)


def _reasoning(row: Mapping) -> str:
    # SFT wraps the reasoning in <think>..</think> itself; a row that already carries the tags must not get
    # them twice.
    text = _text(row, "reasoning")
    m = _THINK_WRAPPED.match(text)
    return (m.group(1) if m else text).strip()


def _plain_options(value: Any) -> list[str]:
    """The plain form's `options`: list of texts, list of "A. text" strings, or {letter: text}."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        keys = [str(k).strip().upper() for k in value]
        if any(len(k) != 1 or k not in LETTERS for k in keys):
            raise RowProblem("bad_options", f"option keys must be single letters, got {list(value)}")
        check_option_letters(sorted(keys), "the options")
        by_letter = dict(zip(keys, value.values(), strict=True))
        texts = [by_letter[letter] for letter in sorted(keys)]
    elif isinstance(value, list):
        texts = value
    else:
        raise RowProblem("bad_field", f"options must be a list or an object, not {type(value).__name__}")
    if any(isinstance(t, bool) or not isinstance(t, (str, int, float)) for t in texts):
        raise RowProblem("bad_field", "every option must be a string")
    texts = [str(t) for t in texts]
    if isinstance(value, list) and texts:
        lettered = [_option_line(t) for t in texts]
        if all(p is not None for p in lettered):
            check_option_letters([p[0] for p in lettered], "the options")
            texts = [p[1] for p in lettered]
        elif any(p is not None for p in lettered):
            # Some written "A. x" and others not: neither reading of the letters can be trusted.
            raise RowProblem("bad_options", "some options carry letters ('A. ...') and others do not")
    texts = [_clean(t) for t in texts]
    if len(texts) > len(LETTERS):
        raise RowProblem("bad_options", f"{len(texts)} options; at most 26 are supported")
    if texts:
        check_option_letters(list(LETTERS[: len(texts)]), "the options")  # at least two
        _check_option_texts(texts)
    return texts


def _cached_video(value: Any, root: Path, check_exists: bool, cache: dict | None) -> tuple[Path, str]:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if cache is None or not isinstance(value, str):
        return resolve_video(value, root, check_exists=check_exists)
    outcome = cache.get(value)
    if outcome is None:
        try:
            outcome = resolve_video(value, root, check_exists=check_exists)
        except RowProblem as problem:
            outcome = problem
        cache[value] = outcome
    if isinstance(outcome, RowProblem):
        raise RowProblem(outcome.reason, outcome.detail)
    return outcome


def example_from_row(
    row: Any,
    *,
    index: int,
    video_root: Path,
    check_video_exists: bool = True,
    video_cache: dict[str, tuple[Path, str] | RowProblem] | None = None,
) -> Example:
    """Validate one row (either form) and build its Example; raises RowProblem naming what is wrong.

    index: the row's 0-based position in its file, used as the id when the row has none.
    video_root: resolved root under which the row's video must lie.
    video_cache: path string -> resolve_video's outcome, shared by the rows of one load (many questions
    share a video; resolving costs a few syscalls).
    """
    if not isinstance(row, dict):
        raise RowProblem("invalid_json", f"a row must be a JSON object, not {type(row).__name__}")
    if "problem" in row:
        problem = _required(row, "problem")
        if not isinstance(problem, str):
            raise RowProblem("bad_field", "field 'problem' must be a string")
        answer_value = _required(row, "answer")
        question, lettered = split_lettered_options(problem)
        if len(lettered) == 1 and not _LETTER_ONLY.match(unwrap_answer(answer_value)):
            # One lone "A: ..." line and a free-text answer: a quoted line of an open-ended question.
            question, options = "\n".join(problem.splitlines()).strip(), []
        else:
            question, options = _checked_problem(question, lettered)
        rid = _row_id(row, ("problem_id", "id"), index)
        video_value = _first(row, ("videos", "video"))
        category = _text(row, "problem_type") or _text(row, "category")
    elif "question" in row:
        question = _required(row, "question")
        if not isinstance(question, str) or not question.strip():
            raise RowProblem("bad_field", "field 'question' must be a non-empty string")
        question = "\n".join(question.splitlines()).strip()
        options = _plain_options(row.get("options"))
        answer_value = _required(row, "answer")
        rid = _row_id(row, ("id", "problem_id", "question_id"), index)
        video_value = _first(row, ("video", "videos"))
        category = _text(row, "category") or _text(row, "problem_type")
    else:
        raise RowProblem(
            "missing_field", "a row needs 'problem' (LongVideo-Reason schema) or 'question' (plain form)"
        )
    answer = resolve_answer(answer_value, options)
    video, video_rel = _cached_video(video_value, video_root, check_video_exists, video_cache)
    return Example(
        id=rid,
        question=question,
        options=options,
        answer=answer,
        reasoning=_reasoning(row),
        category=category.strip(),
        data_type=_text(row, "data_type", "video").strip() or "video",
        video=video,
        video_rel=video_rel,
        raw=row,
    )


# ---------------------------------------------------------------------------------------------------------
# Example -> released row


def released_row(
    *,
    problem_id: int | str,
    question: str,
    options: Sequence[str],
    answer: str,
    video: str,
    reasoning: str = "",
    problem_type: str = "",
    data_type: str = "video",
) -> dict:
    """A row in the released LongVideo-Reason schema (key order as released).

    answer: the correct letter for multiple choice, the answer text when `options` is empty.
    problem_id: written as an integer when it is one ("12" -> 12), as released; else as a string.
    Raises DataError when the row would not read back as written (an option or question that looks like an
    option block, an answer letter outside the options, a multi-line option).
    """
    options = [str(o) for o in options]
    problem = format_problem(question, options)
    try:
        back_question, back_options = parse_problem(problem)
        back_answer = resolve_answer(f"<answer>{answer}</answer>", back_options)
    except RowProblem as err:
        raise DataError(f"row {problem_id!r} cannot be written in the released schema: {err}") from None
    if (back_question, back_options, back_answer) != (question.strip(), options, answer.strip()):
        raise DataError(
            f"row {problem_id!r} would not read back as written (question or options look like an option "
            "block, or contain line breaks / repeated spaces); clean the text first"
        )
    pid: int | str = problem_id
    if isinstance(problem_id, str) and re.fullmatch(r"0|[1-9][0-9]*", problem_id.strip()):
        pid = int(problem_id)
    return {
        "problem_id": pid,
        "problem": problem,
        "data_type": data_type,
        "problem_type": problem_type,
        "reasoning": reasoning,
        "videos": video,
        "answer": f"<answer>{answer.strip()}</answer>",
    }


def example_to_released_row(example: Example) -> dict:
    """The example as a released-schema row; its video is written relative to the video root."""
    return released_row(
        problem_id=example.id,
        question=example.question,
        options=example.options,
        answer=example.answer,
        video=example.video_rel,
        reasoning=example.reasoning,
        problem_type=example.category,
        data_type=example.data_type,
    )
