"""Row-level schema: the lettered-option parser, answer resolution, video path confinement, the released-row
writer. References: hand-written problem texts (the released format is "question\\nA. ...\\nB. ..."), and the
file system for paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from longrl.data.schema import (
    Example,
    RowProblem,
    example_from_row,
    example_to_released_row,
    format_problem,
    parse_problem,
    released_row,
    resolve_answer,
    resolve_video,
    split_lettered_options,
)
from longrl.errors import DataError

# Row 0 of the released test.jsonl, shortened (the options are one per line after the question).
RELEASED_PROBLEM = (
    "What is the primary intention behind the video's sequence of showcasing an African elephant "
    "(0:00:00-0:00:30) ... a cheetah (0:08:00-0:08:50)?\n"
    "A. To rank the animals by size.\n"
    "B. To contrast human athleticism with animal locomotion.\n"
    "C. To document a zoo visit.\n"
    "D. To advertise a safari."
)


def _reason(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.reason


# ---------------------------------------------------------------------------------------------------------
# Options inside the problem text


def test_released_problem_splits_into_question_and_options():
    question, options = parse_problem(RELEASED_PROBLEM)
    assert question.startswith("What is the primary intention") and question.endswith("(0:08:00-0:08:50)?")
    assert options == [
        "To rank the animals by size.",
        "To contrast human athleticism with animal locomotion.",
        "To document a zoo visit.",
        "To advertise a safari.",
    ]


@pytest.mark.parametrize(
    "lines",
    [
        ["A. red", "B. green", "C. blue"],
        ["A) red", "B) green", "C) blue"],
        ["(A) red", "(B) green", "(C) blue"],
        ["A: red", "B: green", "C: blue"],
        ["[A] red", "[B] green", "[C] blue"],
        ["  A.   red  ", "B)\tgreen", "(C) blue"],  # mixed markers and stray spacing
        ["A. red", "", "B. green", "", "C. blue"],  # blank lines between options
    ],
)
def test_option_marker_variants(lines):
    question, options = parse_problem("Which colour is the car?\n" + "\n".join(lines))
    assert (question, options) == ("Which colour is the car?", ["red", "green", "blue"])


@pytest.mark.parametrize("header", ["Options:", "options", "Choices:", "  OPTIONS :  "])
def test_options_header_line_is_dropped(header):
    assert parse_problem(f"Which?\n{header}\nA. x\nB. y") == ("Which?", ["x", "y"])


def test_multiline_question_and_trailing_instruction():
    text = "Watch closely.\nWhich tool is used first?\nA. saw\nB. drill\nAnswer with the letter."
    question, options = parse_problem(text)
    assert options == ["saw", "drill"]
    assert question == "Watch closely.\nWhich tool is used first?\nAnswer with the letter."


def test_option_looking_lines_inside_the_question_stay_question_text():
    # A quoted dialogue line "A: ..." earlier in the question is not the option block (the last block is).
    text = "The host says:\nA: welcome back\nWhat happens next?\nA. a song\nB. a quiz\nC. a break"
    question, options = parse_problem(text)
    assert question == "The host says:\nA: welcome back\nWhat happens next?"
    assert options == ["a song", "a quiz", "a break"]


def test_abbreviations_are_not_options():
    # "A.M." and "B.C." have no space after the first dot: not option markers.
    assert parse_problem("A.M. or P.M.: when does the game start?") == (
        "A.M. or P.M.: when does the game start?",
        [],
    )
    assert split_lettered_options("B.C. era\nWhy?")[1] == []


def test_open_ended_problem_has_no_options():
    assert parse_problem("  Why does the chef add salt?\n") == ("Why does the chef add salt?", [])


def test_multiline_option_text_is_collapsed():
    assert parse_problem("Q?\nA.   a   b\nB. c")[1] == ["a b", "c"]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Q?\nA. x\nB. y\nB. z", "duplicate_option_letter"),
        ("Q?\nA. x\nA. y\nB. z", "duplicate_option_letter"),
        ("Q?\nA. x\nC. y", "bad_options"),  # gap
        ("Q?\nA. x\nC. y\nB. z", "bad_options"),  # out of order
        ("Q?\nA. only", "too_few_options"),
        ("Q?\nA. x\nB.\nC. z", "bad_options"),  # empty option
        ("A. x\nB. y", "bad_field"),  # no question text
    ],
)
def test_bad_option_blocks(text, reason):
    with pytest.raises(RowProblem) as excinfo:
        parse_problem(text)
    assert _reason(excinfo) == reason


def test_format_problem_reads_back():
    options = ["first", "second (with parens)", "third: colon"]
    text = format_problem("Multi\nline question?", options)
    assert text == "Multi\nline question?\nA. first\nB. second (with parens)\nC. third: colon"
    assert parse_problem(text) == ("Multi\nline question?", options)


# ---------------------------------------------------------------------------------------------------------
# Answers

OPTS = ["a red car", "a green bus", "a blue bike", "b"]


@pytest.mark.parametrize(
    "value, letter",
    [
        ("<answer>B</answer>", "B"),
        ("<answer> C </answer>", "C"),
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("[D]", "D"),
        ("C)", "C"),
        ("a green bus", "B"),
        ("  A  Green   BUS. ", "B"),  # case, spacing, final period ignored
        ("<answer>a blue bike</answer>", "C"),
        ("B. a green bus", "B"),
        ("(C) a blue bike", "C"),
        ("c", "C"),  # lower-case letter with no option text "c"
        ("b", "D"),  # ... but option D's text is "b": the text wins over a lower-case letter
    ],
)
def test_answer_forms(value, letter):
    assert resolve_answer(value, OPTS) == letter


@pytest.mark.parametrize(
    "value, reason",
    [
        ("<answer>E</answer>", "answer_not_in_options"),
        ("Z", "answer_not_in_options"),
        ("a purple train", "answer_not_in_options"),
        ("B. a blue bike", "answer_not_in_options"),  # letter and text disagree
        ("<answer></answer>", "bad_field"),
        ("   ", "bad_field"),
        (None, "missing_field"),
        (["B"], "bad_field"),
        (True, "bad_field"),
    ],
)
def test_bad_answers(value, reason):
    with pytest.raises(RowProblem) as excinfo:
        resolve_answer(value, OPTS)
    assert _reason(excinfo) == reason


def test_answer_text_matching_two_options_is_ambiguous():
    with pytest.raises(RowProblem) as excinfo:
        resolve_answer("same", ["same", "other", "Same"])
    assert _reason(excinfo) == "answer_not_in_options"


def test_open_ended_answers():
    assert resolve_answer("<answer>The chef adds salt.</answer>", []) == "The chef adds salt."
    assert resolve_answer(42, []) == "42"
    assert resolve_answer("a", []) == "a"  # a lower-case word, not a letter
    with pytest.raises(RowProblem) as excinfo:  # a letter answer needs options
        resolve_answer("<answer>B</answer>", [])
    assert _reason(excinfo) == "too_few_options"


# ---------------------------------------------------------------------------------------------------------
# Video paths


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "videos" / "sub").mkdir(parents=True)
    (tmp_path / "videos" / "sub" / "a.mp4").write_bytes(b"x")
    (tmp_path / "outside.mp4").write_bytes(b"x")
    return (tmp_path / "videos").resolve()


def test_relative_paths_resolve_under_the_root(root: Path):
    assert resolve_video("sub/a.mp4", root) == (root / "sub" / "a.mp4", "sub/a.mp4")
    assert resolve_video("./sub//a.mp4", root) == (root / "sub" / "a.mp4", "sub/a.mp4")
    assert resolve_video(["sub/a.mp4"], root)[1] == "sub/a.mp4"  # released `videos` as a list of one
    assert resolve_video("sub/../sub/a.mp4", root)[1] == "sub/a.mp4"  # `..` that stays inside is fine
    assert resolve_video(str(root / "sub" / "a.mp4"), root)[1] == "sub/a.mp4"  # absolute, inside


@pytest.mark.parametrize(
    "path",
    ["../outside.mp4", "sub/../../outside.mp4", "sub/../../videos/../outside.mp4", "ABS", "/etc/passwd"],
)
def test_paths_escaping_the_root_are_rejected(root: Path, path: str):
    if path == "ABS":
        path = str(root.parent / "outside.mp4")  # absolute path to an existing file outside the root
    with pytest.raises(RowProblem) as excinfo:
        resolve_video(path, root)
    assert _reason(excinfo) == "video_outside_root"


def test_symlinks_pointing_out_are_rejected_and_inside_ones_followed(root: Path):
    (root / "link_out.mp4").symlink_to(root.parent / "outside.mp4")
    (root / "dir_out").symlink_to(root.parent, target_is_directory=True)
    (root / "link_in.mp4").symlink_to(root / "sub" / "a.mp4")
    for path in ("link_out.mp4", "dir_out/outside.mp4", "dir_out/videos/sub/a.mp4/../../../outside.mp4"):
        with pytest.raises(RowProblem) as excinfo:
            resolve_video(path, root)
        assert _reason(excinfo) == "video_outside_root", path
    resolved, rel = resolve_video("link_in.mp4", root)
    assert resolved == root / "sub" / "a.mp4" and rel == "link_in.mp4"


def test_missing_or_non_file_videos(root: Path):
    for path in ("sub/missing.mp4", "sub"):
        with pytest.raises(RowProblem) as excinfo:
            resolve_video(path, root)
        assert _reason(excinfo) == "video_missing"
    (root / "dangling.mp4").symlink_to(root / "gone.mp4")
    with pytest.raises(RowProblem) as excinfo:
        resolve_video("dangling.mp4", root)
    assert _reason(excinfo) == "video_missing"
    # Without the existence check a missing file passes, but confinement still holds.
    assert resolve_video("sub/missing.mp4", root, check_exists=False)[1] == "sub/missing.mp4"
    with pytest.raises(RowProblem):
        resolve_video("../outside.mp4", root, check_exists=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_video_is_missing(root: Path):
    (root / "sub" / "a.mp4").chmod(0)
    with pytest.raises(RowProblem) as excinfo:
        resolve_video("sub/a.mp4", root)
    assert _reason(excinfo) == "video_missing"


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "missing_field"),
        ([], "missing_field"),
        ("", "bad_field"),
        (["a.mp4", "b.mp4"], "bad_field"),
        (3, "bad_field"),
    ],
)
def test_bad_video_fields(root: Path, value, reason):
    with pytest.raises(RowProblem) as excinfo:
        resolve_video(value, root)
    assert _reason(excinfo) == reason


# ---------------------------------------------------------------------------------------------------------
# Whole rows, both forms


def _released(**over) -> dict:
    row = {
        "problem_id": 7,
        "problem": RELEASED_PROBLEM,
        "data_type": "video",
        "problem_type": "goal",
        "reasoning": "The elephant walks, then the cheetah runs.",
        "videos": "sub/a.mp4",
        "answer": "<answer>B</answer>",
    }
    row.update(over)
    return {k: v for k, v in row.items() if v is not ...}


def test_released_row_to_example(root: Path):
    ex = example_from_row(_released(), index=3, video_root=root)
    assert ex.id == "7" and ex.answer == "B" and ex.category == "goal" and ex.data_type == "video"
    assert ex.options[1] == "To contrast human athleticism with animal locomotion."
    assert ex.answer_index == 1 and ex.answer_text == ex.options[1] and ex.is_multiple_choice
    assert ex.video == root / "sub" / "a.mp4" and ex.video_rel == "sub/a.mp4"
    assert ex.reasoning == "The elephant walks, then the cheetah runs."
    assert ex.raw["problem_id"] == 7


def test_released_row_defaults_and_variants(root: Path):
    ex = example_from_row(
        _released(
            problem_id=..., problem_type=..., data_type=..., reasoning=..., videos=["sub/a.mp4"], answer="B"
        ),
        index=12,
        video_root=root,
    )
    assert (ex.id, ex.category, ex.data_type, ex.reasoning, ex.answer) == ("12", "", "video", "", "B")
    # Reasoning already wrapped in <think> tags is unwrapped (SFT adds the tags itself).
    assert (
        example_from_row(_released(reasoning="<think> r </think>"), index=0, video_root=root).reasoning == "r"
    )


def test_released_open_ended_row(root: Path):
    ex = example_from_row(
        _released(problem="Why does the elephant stop?", answer="<answer>It is tired.</answer>"),
        index=0,
        video_root=root,
    )
    assert ex.options == [] and ex.answer == "It is tired." and not ex.is_multiple_choice
    assert ex.answer_index is None and ex.answer_text == "It is tired."
    # A lone quoted "A: ..." line in an open-ended question is question text, not a one-option block.
    ex = example_from_row(
        _released(problem="The guide says:\nA: look left\nWhat is on the left?", answer="a lake"),
        index=0,
        video_root=root,
    )
    assert ex.options == [] and ex.question == "The guide says:\nA: look left\nWhat is on the left?"


@pytest.mark.parametrize(
    "options, answer, expected_options, expected_answer",
    [
        (["cat", "dog", "cow"], "B", ["cat", "dog", "cow"], "B"),
        (["cat", "dog", "cow"], "cow", ["cat", "dog", "cow"], "C"),
        ({"B": "dog", "A": "cat"}, "dog", ["cat", "dog"], "B"),
        ({"a": "cat", "b": "dog"}, "A", ["cat", "dog"], "A"),
        (["A. cat", "B) dog", "(C) cow"], "<answer>C</answer>", ["cat", "dog", "cow"], "C"),
        ([1, 2, 3], "3", ["1", "2", "3"], "C"),
        (None, "a cat", [], "a cat"),
        ([], "a cat", [], "a cat"),
    ],
)
def test_plain_form(root: Path, options, answer, expected_options, expected_answer):
    row = {
        "id": "q1",
        "question": " What animal? ",
        "options": options,
        "answer": answer,
        "video": "sub/a.mp4",
        "category": "spatial",
    }
    ex = example_from_row(row, index=0, video_root=root)
    assert (ex.id, ex.question, ex.category) == ("q1", "What animal?", "spatial")
    assert (ex.options, ex.answer) == (expected_options, expected_answer)


@pytest.mark.parametrize(
    "over, reason",
    [
        ({"options": ["cat"]}, "too_few_options"),
        ({"options": {"A": "cat", "a": "dog"}}, "duplicate_option_letter"),
        ({"options": ["A. cat", "A. dog"]}, "duplicate_option_letter"),
        ({"options": {"A": "cat", "C": "dog"}}, "bad_options"),
        ({"options": {"AB": "cat", "B": "dog"}}, "bad_options"),
        ({"options": ["A. cat", "dog"]}, "bad_options"),
        ({"options": ["cat", "  "]}, "bad_options"),
        ({"options": [f"o{i}" for i in range(27)]}, "bad_options"),
        ({"options": "A. cat B. dog"}, "bad_field"),
        ({"options": ["cat", None]}, "bad_field"),
        ({"answer": "E"}, "answer_not_in_options"),
        ({"answer": "horse"}, "answer_not_in_options"),
        ({"answer": None}, "missing_field"),
        ({"question": ""}, "bad_field"),
        ({"question": 5}, "bad_field"),
        ({"video": None}, "missing_field"),
        ({"video": "../x.mp4"}, "video_outside_root"),
        ({"video": "nope.mp4"}, "video_missing"),
        ({"category": 3}, "bad_field"),
        ({"id": 1.5}, "bad_field"),
    ],
)
def test_plain_form_bad_rows(root: Path, over, reason):
    row = {"question": "What animal?", "options": ["cat", "dog"], "answer": "A", "video": "sub/a.mp4"}
    row.update(over)
    with pytest.raises(RowProblem) as excinfo:
        example_from_row(row, index=0, video_root=root)
    assert _reason(excinfo) == reason


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"foo": 1}, "missing_field"),
        ("just a string", "invalid_json"),
        ([1, 2], "invalid_json"),
        (_released(problem=None), "missing_field"),
        (_released(problem=["Q?"]), "bad_field"),
        (_released(answer=...), "missing_field"),
        (_released(videos=...), "missing_field"),
        (_released(answer="<answer>F</answer>"), "answer_not_in_options"),
        (_released(problem="Why?", answer="<answer>B</answer>"), "too_few_options"),
        (_released(problem="Q?\nA. x\nB. y\nB. z"), "duplicate_option_letter"),
        (_released(problem="Q?\nA. x", answer="A"), "too_few_options"),
        (_released(problem_id=True), "bad_field"),
        (_released(videos="/etc/hostname"), "video_outside_root"),
    ],
)
def test_released_bad_rows(root: Path, row, reason):
    with pytest.raises(RowProblem) as excinfo:
        example_from_row(row, index=0, video_root=root)
    assert _reason(excinfo) == reason


# ---------------------------------------------------------------------------------------------------------
# Writing the released schema


def test_example_to_released_row_round_trips(root: Path):
    ex = example_from_row(_released(), index=0, video_root=root)
    row = example_to_released_row(ex)
    assert list(row) == [
        "problem_id",
        "problem",
        "data_type",
        "problem_type",
        "reasoning",
        "videos",
        "answer",
    ]
    assert row["problem_id"] == 7 and row["answer"] == "<answer>B</answer>" and row["videos"] == "sub/a.mp4"
    assert row["problem"] == RELEASED_PROBLEM
    back = example_from_row(row, index=0, video_root=root)
    assert back == ex and back.raw == row
    # A plain-form example comes out in the released schema, and reads back equal.
    plain = example_from_row(
        {
            "id": "clip-9",
            "question": "Q?",
            "options": {"A": "x", "B": "y"},
            "answer": "y",
            "video": "sub/a.mp4",
        },
        index=0,
        video_root=root,
    )
    row = example_to_released_row(plain)
    assert (
        row["problem_id"] == "clip-9"
        and row["problem"] == "Q?\nA. x\nB. y"
        and row["answer"] == "<answer>B</answer>"
    )
    assert example_from_row(row, index=0, video_root=root) == plain


def test_released_row_refuses_text_that_would_not_read_back():
    base = dict(problem_id=1, question="Q?", options=["x", "y"], answer="A", video="a.mp4")
    assert released_row(**base)["problem"] == "Q?\nA. x\nB. y"
    for bad in (
        {"options": ["x", "two\nlines"]},
        {"question": "Pick one:\nA. x\nB. y"},  # the question already holds an option block
        {"answer": "C"},
        {"options": [], "answer": "B"},  # letter answer, open-ended question
    ):
        with pytest.raises(DataError):
            released_row(**{**base, **bad})


def test_example_equality_ignores_raw(root: Path):
    a = Example(
        "1", "Q?", ["x", "y"], "A", "", "", "video", root / "sub" / "a.mp4", "sub/a.mp4", raw={"k": 1}
    )
    b = Example(
        "1", "Q?", ["x", "y"], "A", "", "", "video", root / "sub" / "a.mp4", "sub/a.mp4", raw={"k": 2}
    )
    assert a == b and a != Example("1", "Q?", ["x", "y"], "B", "", "", "video", a.video, a.video_rel)
