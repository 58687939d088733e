"""Benchmark files -> `EvalItem`s, with bad rows counted (or, with on_bad_row="fail", the first one raised).

    items, report = load_benchmark("video-mme", "videomme/test.parquet", "videomme/data", subtitles=True)

Benchmarks (`--benchmark`), all local files:

- ``longvideo-reason``: the released LongVideo-Reason eval rows (`problem_id`, `problem` with the lettered
  options inside, `problem_type` = category, `videos`, `answer` as `<answer>B</answer>`; the plain form
  of `longrl.data.schema` is read too). Rows without options are open-ended questions.
- ``video-mme``: Video-MME's released fields, one row per question (the parquet / flat JSON layout):
  `video_id` ("001"), `videoID` (the YouTube id the video and subtitle files are named after), `duration`
  (short / medium / long), `domain`, `sub_category`, `task_type` (the category), `question_id`,
  `question`, `options` as ["A. ...", ...], `answer` (a letter). The older nested JSON (one object per video
  holding a `questions` list) is read too. Videos are `<video_root>/<videoID or video_id>.mp4` (.mkv and
  .webm are tried as well); `.parquet` files need pyarrow.
- ``mc``: generic multiple-choice JSON/JSONL rows (`question`, `options`, `answer` letter or option text,
  `video`, `category`), the plain form of `longrl.data.schema`. A row without options is a bad row.
- ``open-ended``: ActivityNet-QA style free-text QA (`question`, `answer`, `video` or `video_name`,
  optional `category` or `type`; ActivityNet-QA's numeric types are named, 3 -> "yes/no"). Scored by
  normalized exact match (or an LLM judge). ActivityNet-QA's own release keeps a split in two files,
  `<split>_q.json` ([{"video_name", "question_id", "question"}]) and `<split>_a.json` ([{"question_id",
  "answer", "type"}]): pass either as --data and the other is read from the same folder and joined on
  `question_id` (a question without an answer is a bad row; files sharing no id are an error). Its
  `video_name` is the YouTube id and the videos are stored as `v_<video_name>.mp4` (ActivityNet's naming;
  the bare `<video_name>` and .mkv / .webm are tried too).

With subtitles on, an item's subtitle file is `<subtitle_root>/<video path relative to the video root, with
suffix .srt>` (Video-MME: `<videoID>.srt`); a video without one is not a bad row (`load_benchmark` returns
how many items have none).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longrl.data.dataset import ON_BAD_ROW, BadRow, LoadReport, read_rows
from longrl.data.schema import Example, RowProblem, example_from_row
from longrl.errors import ConfigError, DataError
from longrl.eval.items import DURATION_BUCKETS, EvalItem
from longrl.rl.rewards import MULTIPLE_CHOICE, OPEN_ENDED

BENCHMARKS = ("longvideo-reason", "video-mme", "mc", "open-ended")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")

# ActivityNet-QA's `type` codes (its dataset README): the question categories of its breakdown tables.
ACTIVITYNET_QA_TYPES = {
    0: "motion",
    1: "spatial relation",
    2: "temporal relation",
    3: "yes/no",
    4: "color",
    5: "object",
    6: "location",
    7: "number",
    8: "other",
}

RawRows = Iterator[tuple[str, int, Any]]  # (where, 0-based row index, row or a RowProblem)


def load_benchmark(
    benchmark: str,
    data: str | os.PathLike,
    video_root: str | os.PathLike | None,
    *,
    subtitles: bool = False,
    subtitle_root: str | os.PathLike | None = None,
    on_bad_row: str = "skip",
) -> tuple[list[EvalItem], LoadReport, int]:
    """Read a benchmark file: (items in file order, the bad-row report, number of items without subtitles).

    video_root: the folder the rows' videos are in (None: the data file's folder). subtitle_root: where the
    .srt files are (None: the video root). Raises ConfigError for an unknown benchmark, DataError for an
    unreadable file or one without any usable row, and (on_bad_row="fail") for the first bad row. Rows
    are validated by `longrl.data.schema.example_from_row`, as `load_examples` does; a row with the id of an
    earlier one is a bad row ("bad_field"): the id is how a rerun finds the questions already answered.
    """
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigError(f"--on-bad-row must be one of {', '.join(ON_BAD_ROW)}, got {on_bad_row!r}")
    path = Path(data)
    items, report = _load_rows(path, video_root, _LAYOUTS[benchmark], on_bad_row)
    if not items:
        raise DataError(f"{path}: no usable rows; {report.summary()}")
    missing = 0
    if subtitles:
        root = Path(subtitle_root) if subtitle_root is not None else _root(video_root, path)
        if not root.is_dir():
            raise DataError(f"subtitle root {root} is not a folder; pass --subtitle-root DIR")
        with_subs = []
        for item in items:
            srt = root / Path(item.example.video_rel).with_suffix(".srt")
            found = srt if srt.is_file() else None
            missing += found is None
            with_subs.append(EvalItem(item.example, item.duration, found, item.answer_kind))
        items = with_subs
    return items, report, missing


def _root(video_root: str | os.PathLike | None, data: Path) -> Path:
    return Path(video_root) if video_root is not None else data.parent


# --------------------------------------------------------------------------------------------- raw rows


def read_raw_rows(path: Path) -> RawRows:
    """(where, index, row) for each row of a .parquet, JSON list or JSONL file (DataError when unreadable)."""
    if path.suffix.lower() != ".parquet":
        yield from read_rows(path)
        return
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid / ArrowIOError derive from these
        raise DataError(f"{path}: cannot read the parquet file: {str(err).splitlines()[0]}") from None
    for i, row in enumerate(rows):
        yield f"row[{i}]", i, row


@dataclass(frozen=True)
class _Layout:
    """How one benchmark's rows become items: `to_row` (its row -> a row `example_from_row` reads, and the
    duration bucket or None) and `kind` (the validated example -> its answer kind, or RowProblem)."""

    to_row: Callable[[dict, Path], tuple[dict, str | None]]
    kind: Callable[[Example], str]
    read: Callable[[Path], RawRows] = read_raw_rows


def _load_rows(path: Path, video_root: str | os.PathLike | None, layout: _Layout, on_bad_row: str):
    """Every row of `path` through `layout` and the shared validation, bad rows handled in file order."""
    if not path.is_file():
        raise DataError(
            f"data file {path} not found" if not path.exists() else f"data file {path} is not a file"
        )
    root = _root(video_root, path)
    if not root.is_dir():
        raise DataError(f"video root {root} is not a folder; pass --video-root DIR, the folder of the videos")
    root = root.resolve()
    report = LoadReport(path=path)
    items: list[EvalItem] = []
    cache: dict = {}
    seen: set[str] = set()
    parsed_any = False
    for where, index, row in _flatten(layout.read(path)):
        report.total += 1
        try:
            if isinstance(row, RowProblem):
                raise row
            parsed_any = True
            if not isinstance(row, dict):
                raise RowProblem("invalid_json", f"a row must be an object, not {type(row).__name__}")
            plain, duration = layout.to_row(row, root)
            example = example_from_row(plain, index=index, video_root=root, video_cache=cache)
            kind = layout.kind(example)
            if example.id in seen:
                # The id is how a rerun finds the questions it already answered.
                raise RowProblem("bad_field", f"id {example.id!r} repeats an earlier row's id")
        except RowProblem as problem:
            if on_bad_row == "fail":
                raise DataError(f"{path}:{where.removeprefix('line ')}: {problem}") from None
            report.skipped[problem.reason] += 1
            if len(report.bad_rows) < 5:
                report.bad_rows.append(BadRow(where, problem.reason, problem.detail))
            continue
        seen.add(example.id)
        items.append(EvalItem(example, duration=duration, answer_kind=kind))
        report.kept += 1
    if not report.total:
        raise DataError(f"{path}: no rows (the file is empty)")
    if not parsed_any:
        raise DataError(f"{path}: not JSON or JSONL ({report.bad_rows[0]})")
    return items, report


def _flatten(rows: RawRows) -> RawRows:
    """Video-MME's nested JSON (one object per video with a `questions` list) -> one row per question, the
    video's fields copied into each; every other row passes through. Indices count the questions."""
    index = 0
    for where, _, row in rows:
        if isinstance(row, dict) and isinstance(row.get("questions"), list):
            video_fields = {k: v for k, v in row.items() if k != "questions"}
            for j, question in enumerate(row["questions"]):
                merged = {**video_fields, **question} if isinstance(question, dict) else question
                yield f"{where}.questions[{j}]", index, merged
                index += 1
        else:
            yield where, index, row
            index += 1


def find_video(names: list[Any], root: Path) -> str:
    """The first `<name><ext>` that is a file under `root` (ext in VIDEO_EXTENSIONS), else `<names[0]>.mp4`
    (so the shared validation reports it missing). Names that are not non-empty text are skipped."""
    usable = [str(n).strip() for n in names if isinstance(n, (str, int)) and not isinstance(n, bool)]
    usable = [n for n in usable if n]
    if not usable:
        raise RowProblem("missing_field", "the row names no video (video_id / videoID)")
    for name in usable:
        for ext in VIDEO_EXTENSIONS:
            if (root / f"{name}{ext}").is_file():
                return f"{name}{ext}"
    return f"{usable[0]}.mp4"


def _video_mme_row(row: dict, root: Path) -> tuple[dict, str | None]:
    """A Video-MME row -> (plain multiple-choice row, its duration bucket)."""
    duration = row.get("duration")
    if duration is not None:
        if not isinstance(duration, str) or duration.strip().lower() not in DURATION_BUCKETS:
            raise RowProblem(
                "bad_field", f"duration must be one of {', '.join(DURATION_BUCKETS)}, got {duration!r}"
            )
        duration = duration.strip().lower()
    if not row.get("options"):
        raise RowProblem("missing_field", "field 'options' is missing")
    plain = {
        "id": row.get("question_id"),
        "question": row.get("question"),
        "options": row["options"],
        "answer": row.get("answer"),
        "video": find_video([row.get("videoID"), row.get("video_id")], root),
        "category": row.get("task_type"),
    }
    return plain, duration


def _open_ended_row(row: dict, root: Path) -> tuple[dict, None]:
    """An ActivityNet-QA style row -> (plain open-ended row, no duration bucket)."""
    if row.get("options"):
        raise RowProblem("bad_options", "the row has options; use --benchmark mc for multiple choice")
    video = row.get("video") if row.get("video") is not None else row.get("videos")
    if video is None:
        name = row.get("video_name")
        names = [name, row.get("video_id")]
        if isinstance(name, str) and name and not name.startswith("v_"):
            names = [f"v_{name}", *names]  # ActivityNet stores YouTube id X as v_X.mp4
        video = find_video(names, root)
    category = row.get("category")
    if category is None and row.get("type") is not None:
        kind = row["type"]
        category = ACTIVITYNET_QA_TYPES.get(kind, str(kind)) if isinstance(kind, int) else str(kind)
    plain = {
        "id": row.get("question_id") if row.get("question_id") is not None else row.get("id"),
        "question": row.get("question"),
        "answer": row.get("answer"),
        "video": video,
        "category": category,
    }
    return plain, None


def split_pair(path: Path) -> tuple[Path, Path] | None:
    """(questions, answers) paths when `path` is named like one of ActivityNet-QA's split files
    (`test_q.json` / `test_a.json`), the other one beside it; else None."""
    stem = path.stem
    if stem.endswith("_q"):
        return path, path.with_name(f"{stem[:-2]}_a{path.suffix}")
    if stem.endswith("_a"):
        return path.with_name(f"{stem[:-2]}_q{path.suffix}"), path
    return None


def read_open_ended_rows(path: Path) -> RawRows:
    """The rows of an open-ended file; an ActivityNet-QA split file (questions without answers, or answers
    without questions) is joined with its sibling on `question_id`, rows in the questions file's order.

    Raises DataError (one line) when the sibling is missing, unreadable, repeats an id or shares no id with
    the questions. A question whose id has no answer comes as a RowProblem (a bad row).
    """
    rows = list(read_raw_rows(path))
    pair = split_pair(path)
    dicts = [row for _, _, row in rows if isinstance(row, dict)]
    if pair is None or not dicts:
        return iter(rows)
    questions, answers = pair
    given_questions = path == questions
    if any(("answer" if given_questions else "question") in row for row in dicts):
        return iter(rows)  # already a joined file that happens to be named like a split file
    other = answers if given_questions else questions
    if not other.is_file():
        what = "answers" if given_questions else "questions"
        raise DataError(
            f"{path} holds ActivityNet-QA {'questions' if given_questions else 'answers'} only and its "
            f"{what} file {other} is missing; put {other.name} next to it (or pass a joined file)"
        )
    question_rows = rows if given_questions else list(read_raw_rows(questions))
    answer_rows = list(read_raw_rows(answers)) if given_questions else rows
    return _joined(question_rows, _answers_by_id(answers, answer_rows), questions, answers)


def _answers_by_id(answers: Path, rows: list) -> dict[str, dict]:
    """question_id -> answer row, from the raw rows of an ActivityNet-QA answers file."""
    by_id: dict[str, dict] = {}
    for where, _, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{answers}: {where} is not an answer row ({{question_id, answer, type}})")
        qid = row.get("question_id")
        if qid is None:
            raise DataError(f"{answers}: an answer row has no question_id ({_preview(row)})")
        if str(qid) in by_id:
            raise DataError(f"{answers}: question_id {qid!r} has two answers")
        by_id[str(qid)] = row
    return by_id


def _joined(question_rows: list, by_id: dict[str, dict], questions: Path, answers: Path) -> RawRows:
    ids = [str(row.get("question_id")) for _, _, row in question_rows if isinstance(row, dict)]
    if ids and not any(qid in by_id for qid in ids):
        raise DataError(
            f"{questions.name} and {answers.name} share no question_id (e.g. {ids[0]!r} has no answer); "
            "pass the questions and answers of the same split"
        )
    for where, index, row in question_rows:
        if isinstance(row, dict):
            answer = by_id.get(str(row.get("question_id")))
            if answer is None:
                row = RowProblem(
                    "missing_field", f"question_id {row.get('question_id')!r} has no answer in {answers.name}"
                )
            else:
                row = {**answer, **row}  # the question's fields, plus `answer` and `type`
        yield where, index, row


def _preview(row: dict) -> str:
    text = str(row)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_is(row: dict, root: Path) -> tuple[dict, None]:
    return row, None


def _by_options(example: Example) -> str:
    return MULTIPLE_CHOICE if example.options else OPEN_ENDED


def _multiple_choice(example: Example) -> str:
    if not example.options:
        raise RowProblem("too_few_options", "the row has no options; the mc benchmark is multiple choice")
    return MULTIPLE_CHOICE


def _open_ended(example: Example) -> str:
    return OPEN_ENDED


_LAYOUTS = {
    "longvideo-reason": _Layout(_as_is, _by_options),
    "video-mme": _Layout(_video_mme_row, _multiple_choice),
    "mc": _Layout(_as_is, _multiple_choice),
    "open-ended": _Layout(_open_ended_row, _open_ended, read_open_ended_rows),
}
