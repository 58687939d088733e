"""Loading data files: JSON and JSONL, both row forms, bad rows counted by reason or failing the load with the
file and line, file-level errors, and the write -> load round trip. References: hand-built files whose every
row's fate is known in advance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longrl.data import BAD_ROW_REASONS, Example, load_examples, write_released_jsonl
from longrl.errors import ConfigError, DataError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    videos = tmp_path / "videos"
    (videos / "clips").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "c.webm"):
        (videos / "clips" / name).write_bytes(b"\x00")
    (tmp_path / "secret.mp4").write_bytes(b"\x00")
    (videos / "clips" / "escape.mp4").symlink_to(tmp_path / "secret.mp4")
    return videos


def released(pid: int, video: str = "clips/a.mp4", answer: str = "<answer>B</answer>", **over) -> dict:
    row = {
        "problem_id": pid,
        "problem": f"Question {pid}: what happens after the goal?\n"
        "A. a replay\nB. a celebration\nC. a red card",
        "data_type": "video",
        "problem_type": "temporal",
        "reasoning": f"Reasoning {pid}.",
        "videos": video,
        "answer": answer,
    }
    row.update(over)
    return row


def plain(qid: str, video: str = "clips/b.mp4", **over) -> dict:
    row = {
        "id": qid,
        "question": f"Which animal appears in {qid}?",
        "options": ["cat", "dog", "owl"],
        "answer": "owl",
        "video": video,
        "category": "spatial",
    }
    row.update(over)
    return row


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = [
    released(0),
    plain("p1"),
    released(2, video="clips/c.webm", answer="C"),
    plain("p3", options={"A": "x", "B": "y"}, answer="A", category=None),
]


def _check_good(examples: list[Example], root: Path) -> None:
    assert [e.id for e in examples] == ["0", "p1", "2", "p3"]
    assert [e.answer for e in examples] == ["B", "C", "C", "A"]
    assert [e.category for e in examples] == ["temporal", "spatial", "temporal", ""]
    assert examples[0].options == ["a replay", "a celebration", "a red card"]
    assert examples[0].question == "Question 0: what happens after the goal?"
    assert examples[2].video == (root / "clips" / "c.webm").resolve()
    assert all(e.video.is_file() for e in examples)


def test_jsonl_both_forms(tmp_path: Path, root: Path):
    examples, report = load_examples(write_jsonl(tmp_path / "d.jsonl", GOOD), root)
    _check_good(examples, root)
    assert (report.total, report.kept, report.num_skipped) == (4, 4, 0)
    assert report.summary() == "d.jsonl: kept 4 of 4 rows"


def test_json_list_both_forms(tmp_path: Path, root: Path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(GOOD, indent=2), encoding="utf-8")
    examples, report = load_examples(path, root)
    _check_good(examples, root)
    assert (report.total, report.kept) == (4, 4)


def test_jsonl_with_json_suffix_bom_and_blank_lines(tmp_path: Path, root: Path):
    path = tmp_path / "d.json"
    text = "\n\n" + "\n\n".join(json.dumps(r) for r in GOOD) + "\n\n"
    path.write_bytes("\ufeff".encode() + text.encode())
    examples, report = load_examples(path, root)
    _check_good(examples, root)
    assert report.total == 4  # blank lines are not rows


# One row for every reason, with its JSONL line number (line 1 is a good row).
BAD = {
    "invalid_json": '{"problem_id": 5, "problem": "Q?',
    "missing_field": {"problem_id": 6, "problem": "Q?\nA. x\nB. y", "videos": "clips/a.mp4"},
    "bad_field": plain("p7", question=["not", "text"]),
    "too_few_options": plain("p8", options=["only"]),
    "duplicate_option_letter": released(9, problem="Q?\nA. x\nB. y\nB. z"),
    "bad_options": released(10, problem="Q?\nA. x\nC. y"),
    "answer_not_in_options": released(11, answer="<answer>D</answer>"),
    "video_outside_root": released(12, video="clips/escape.mp4"),
    "video_missing": plain("p13", video="clips/none.mp4"),
}


def _bad_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "mixed.jsonl", [released(0), *BAD.values(), plain("p14")])


def test_every_bad_row_reason_is_counted(tmp_path: Path, root: Path):
    assert set(BAD) == set(BAD_ROW_REASONS)
    examples, report = load_examples(_bad_file(tmp_path), root, keep_bad_rows=3)
    assert [e.id for e in examples] == ["0", "p14"]
    assert (report.total, report.kept, report.num_skipped) == (11, 2, 9)
    assert dict(report.skipped) == {reason: 1 for reason in BAD_ROW_REASONS}
    # The first few bad rows are kept with their line numbers, in file order.
    assert [(b.where, b.reason) for b in report.bad_rows] == [
        ("line 2", "invalid_json"),
        ("line 3", "missing_field"),
        ("line 4", "bad_field"),
    ]
    assert "answer" in report.bad_rows[1].detail
    assert report.summary().startswith(
        "mixed.jsonl: kept 2 of 11 rows; skipped 9 (answer_not_in_options: 1, "
    )
    d = report.to_dict()
    assert d["skipped"] == {reason: 1 for reason in BAD_ROW_REASONS} and len(d["bad_rows"]) == 3
    json.dumps(d)  # JSON-ready for the run summary


@pytest.mark.parametrize("reason", list(BAD))
def test_fail_mode_names_file_line_and_reason(tmp_path: Path, root: Path, reason: str):
    path = write_jsonl(tmp_path / "one_bad.jsonl", [released(0), plain("p1"), BAD[reason]])
    with pytest.raises(DataError) as excinfo:
        load_examples(path, root, on_bad_row="fail")
    message = str(excinfo.value)
    assert message.startswith(f"{path}:3: {reason}: ")
    assert "\n" not in message


def test_fail_mode_in_a_json_list_names_the_row_index(tmp_path: Path, root: Path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([released(0), released(1, answer="<answer>Q</answer>")]), encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.json:row\[1\]: answer_not_in_options: "):
        load_examples(path, root, on_bad_row="fail")
    _, report = load_examples(path, root)
    assert report.bad_rows[0].where == "row[1]" and report.kept == 1


def test_fail_mode_passes_a_clean_file(tmp_path: Path, root: Path):
    examples, report = load_examples(write_jsonl(tmp_path / "d.jsonl", GOOD), root, on_bad_row="fail")
    assert len(examples) == 4 and report.kept == 4


def test_multiline_question_text_in_a_bad_row_stays_one_line(tmp_path: Path, root: Path):
    row = plain("p0", answer="a very\nlong\nanswer " * 30)
    with pytest.raises(DataError) as excinfo:
        load_examples(write_jsonl(tmp_path / "d.jsonl", [row]), root, on_bad_row="fail")
    assert "\n" not in str(excinfo.value) and len(str(excinfo.value)) < 500


def test_video_check_can_be_skipped_but_confinement_cannot(tmp_path: Path, root: Path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [plain("p0", video="clips/none.mp4"), plain("p1", video="../secret.mp4")]
    )
    examples, report = load_examples(path, root, check_video_exists=False)
    assert [e.video_rel for e in examples] == ["clips/none.mp4"]
    assert dict(report.skipped) == {"video_outside_root": 1}


def test_default_video_root_is_the_data_folder(tmp_path: Path, root: Path):
    path = write_jsonl(
        root / "d.jsonl", [plain("p0", video="clips/a.mp4"), plain("p1", video="../secret.mp4")]
    )
    examples, report = load_examples(path, None)
    assert examples[0].video == (root / "clips" / "a.mp4").resolve()
    assert dict(report.skipped) == {"video_outside_root": 1}


# ---------------------------------------------------------------------------------------------------------
# File-level problems: always DataError, in either mode


@pytest.mark.parametrize("mode", ["skip", "fail"])
def test_missing_file_and_folder(tmp_path: Path, root: Path, mode: str):
    with pytest.raises(DataError, match="not found"):
        load_examples(tmp_path / "nope.jsonl", root, on_bad_row=mode)
    with pytest.raises(DataError, match="not a file"):
        load_examples(tmp_path, root, on_bad_row=mode)


def test_missing_video_root(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [plain("p0")])
    with pytest.raises(DataError, match="--video-root"):
        load_examples(path, tmp_path / "no_such_dir")


@pytest.mark.parametrize(
    "content",
    [
        "problem_id,problem,answer\n0,What?,B\n",  # CSV
        "just some text\nmore text\n",
        '{\n  "problem": "pretty-printed single object"\n}\n',  # not JSONL, not a JSON list
    ],
)
def test_file_that_is_not_json(tmp_path: Path, root: Path, content: str):
    path = tmp_path / "d.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="not JSON or JSONL"):
        load_examples(path, root)


def test_broken_json_list_and_non_list(tmp_path: Path, root: Path):
    path = tmp_path / "d.json"
    path.write_text('[{"problem": "Q?"}, ', encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        load_examples(path, root)


def test_binary_file(tmp_path: Path, root: Path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        load_examples(path, root)


@pytest.mark.parametrize("content", ["", "\n\n  \n", "[]"])
def test_empty_file_is_an_error_unless_allowed(tmp_path: Path, root: Path, content: str):
    path = tmp_path / "d.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        load_examples(path, root)
    examples, report = load_examples(path, root, allow_empty=True)
    assert examples == [] and (report.total, report.kept) == (0, 0)


def test_file_with_no_usable_row_is_an_error_unless_allowed(tmp_path: Path, root: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [plain("p0", video="clips/none.mp4"), released(1, answer="Z")])
    with pytest.raises(DataError, match=r"no usable rows; d\.jsonl: kept 0 of 2 rows; skipped 2"):
        load_examples(path, root)
    examples, report = load_examples(path, root, allow_empty=True)
    assert examples == [] and report.num_skipped == 2


def test_bad_on_bad_row_value(tmp_path: Path, root: Path):
    with pytest.raises(ConfigError, match="on_bad_row"):
        path = write_jsonl(tmp_path / "d.jsonl", GOOD)
        load_examples(path, root, on_bad_row="ignore")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Round trip


def test_write_then_load_gives_equal_examples(tmp_path: Path, root: Path):
    source = tmp_path / "source.json"
    source.write_text(json.dumps(GOOD + [plain("open", options=None, answer="Two owls.")]), encoding="utf-8")
    examples, _ = load_examples(source, root)
    out = tmp_path / "released.jsonl"
    assert write_released_jsonl(examples, out) == 5
    back, report = load_examples(out, root, on_bad_row="fail")
    assert back == examples and report.kept == 5
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["problem_id"] for r in rows] == [0, "p1", 2, "p3", "open"]
    assert rows[1]["problem"] == "Which animal appears in p1?\nA. cat\nB. dog\nC. owl"
    assert rows[1]["answer"] == "<answer>C</answer>" and rows[4]["answer"] == "<answer>Two owls.</answer>"
    assert all(
        set(r) == {"problem_id", "problem", "data_type", "problem_type", "reasoning", "videos", "answer"}
        for r in rows
    )
    assert not list(tmp_path.glob(".released.jsonl.tmp*"))  # the temporary file is gone


def test_write_refuses_and_leaves_no_partial_file(tmp_path: Path, root: Path):
    examples, _ = load_examples(write_jsonl(tmp_path / "d.jsonl", GOOD), root)
    bad = Example(
        "x", "Pick:\nA. a\nB. b", ["c", "d"], "A", "", "", "video", examples[0].video, "clips/a.mp4"
    )
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError):
        write_released_jsonl([*examples, bad], out)
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.tmp*"))


def test_released_file_loads_with_hf_datasets(tmp_path: Path, root: Path):
    datasets = pytest.importorskip("datasets")
    examples, _ = load_examples(write_jsonl(tmp_path / "d.jsonl", [released(0), released(1)]), root)
    out = tmp_path / "released.jsonl"
    write_released_jsonl(examples, out)
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert ds.num_rows == 2 and ds[1]["answer"] == "<answer>B</answer>" and ds[0]["problem_id"] == 0


def test_rows_sharing_a_video_are_each_judged(tmp_path: Path, root: Path):
    # Video resolution is cached per path within a load: every row still gets its own verdict and count.
    rows = [
        plain("p0", video="clips/none.mp4"),
        plain("p1", video=["clips/none.mp4"]),
        plain("p2"),
        plain("p3"),
    ]
    examples, report = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), root)
    assert [e.id for e in examples] == ["p2", "p3"] and examples[0].video == examples[1].video
    assert dict(report.skipped) == {"video_missing": 2}
    assert [b.where for b in report.bad_rows] == ["line 1", "line 2"]
