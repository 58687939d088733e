"""The parts of generate-data that need no video or server: crash-safe record logs, the reasoner-output
checks, timestamps, question slots, filter scoring and the split rules. References are hand-computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longrl.data.generate.config import GenerateConfig
from longrl.data.generate.filter import in_rl_band, score_responses
from longrl.data.generate.questions import slots_of
from longrl.data.generate.records import format_time, video_id
from longrl.data.generate.split import assign_splits, eval_videos
from longrl.data.generate.store import OutputLock, RecordLog, write_jsonl_atomic
from longrl.data.generate.validation import (
    InvalidOutput,
    find_timestamps,
    validate_question,
    validate_refined,
)
from longrl.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------------ record logs


def test_record_log_resumes_drops_torn_tail_and_dedups(tmp_path):
    path = tmp_path / "log.jsonl"
    with RecordLog.open(path) as log:
        log.append({"id": "a", "v": 1})
        log.append({"id": "b", "v": 2})
    with path.open("a") as f:
        f.write('{"id": "c", "v"')  # a write cut short by a kill
    with RecordLog.open(path) as log:
        assert log.dropped_bytes == len('{"id": "c", "v"')
        assert [r["id"] for r in log.values()] == ["a", "b"]
        log.append({"id": "a", "v": 3})  # the same id again replaces the record
        log.append({"id": "c", "v": 4})
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 4  # the torn line is gone, appends are whole lines
    with RecordLog.open(path) as log:
        assert {r["id"]: r["v"] for r in log.values()} == {"a": 3, "b": 2, "c": 4}
        log.compact(order=lambda r: r["id"])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"id": "a", "v": 3}, {"id": "b", "v": 2}, {"id": "c", "v": 4},
    ]  # fmt: skip
    assert not list(tmp_path.glob(".*tmp*"))


def test_record_log_without_newline_at_all_and_damaged_middle_line(tmp_path):
    torn_only = tmp_path / "torn.jsonl"
    torn_only.write_text('{"id": "x"')
    with RecordLog.open(torn_only) as log:
        assert len(log) == 0
    assert torn_only.read_text() == ""
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(DataError, match="damaged.jsonl:2"):
        RecordLog.open(damaged)


def test_write_jsonl_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old content\n")
    assert write_jsonl_atomic(path, [{"id": "1"}, {"id": "2"}]) == 2
    assert path.read_text() == '{"id": "1"}\n{"id": "2"}\n'


def test_output_lock_is_exclusive(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(ConfigError, match="another generate-data run"):
            with OutputLock(tmp_path):
                pass
    with OutputLock(tmp_path):  # released on exit
        pass


# ----------------------------------------------------------------------------------------- ids, times, slots


def test_ids_and_time_labels():
    assert (
        video_id("cooking/day 1.mp4").startswith("cooking_day_1-") and len(video_id("a.mp4")) == len("a-") + 8
    )
    assert video_id("a.mp4") != video_id("b/a.mp4")
    assert [format_time(s) for s in (0, 9.96, 65, 65.4, 3725)] == [
        "00:00",
        "00:10",
        "01:05",
        "01:05.4",
        "1:02:05",
    ]


def test_question_slots_round_robin_over_categories():
    slots = slots_of({"id": "v"}, ("temporal", "goal", "spatial"), 5)
    assert [(rid, cat, n, k) for rid, cat, n, k in slots] == [
        ("v/q00-temporal", "temporal", 1, 2),
        ("v/q01-goal", "goal", 1, 2),
        ("v/q02-spatial", "spatial", 1, 1),
        ("v/q03-temporal", "temporal", 2, 2),
        ("v/q04-goal", "goal", 2, 2),
    ]


# --------------------------------------------------------------------------------------------- validation


def test_find_timestamps():
    text = "At 00:05 and 1:02:03, then 12.5s later, in 10-20 s, for 3 seconds; 2.5 apples at 14:30.5"
    assert find_timestamps(text) == [5.0, 3723.0, 12.5, 10.0, 20.0, 3.0, 870.5]
    assert find_timestamps("version 3.10 has 2 options") == []


def reply(**fields) -> str:
    base = {
        "question": "What happens after the door opens?",
        "options": ["a dog runs in", "a cat leaves", "the light goes out", "nothing"],
        "answer": "A",
        "reasoning": "At 00:12 the door opens and at 00:15 a dog runs in, so A.",
        "category": "temporal",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None})


def problem(text: str, duration_s: float = 30.0, category: str = "temporal") -> str:
    with pytest.raises(InvalidOutput) as caught:
        validate_question(text, category=category, duration_s=duration_s)
    return caught.value.reason


def test_validate_question_accepts_good_replies():
    draft = validate_question(reply(), category="temporal", duration_s=30.0)
    assert (draft.answer, draft.options[0], draft.timestamps_s) == ("A", "a dog runs in", [12.0, 15.0])
    fenced = "```json\n" + reply(answer="(C)", options=["A. x", "B. y", "C. z", "D. w"]) + "\n```"
    draft = validate_question(fenced, category="temporal", duration_s=30.0)
    assert (draft.answer, draft.options) == ("C", ["x", "y", "z", "w"])
    assert (
        validate_question(reply(category="Goal & Purpose"), category="goal", duration_s=30).category == "goal"
    )


def test_validate_question_problems():
    assert problem("Sure! Here it is: {") == "invalid_json"
    assert problem("[1, 2]") == "invalid_json"
    assert problem(reply(question=None)) == "missing_field"
    assert problem(reply(options=["a", "b", "c"])) == "bad_options"
    assert problem(reply(options=["a", "", "c", "d"])) == "bad_options"
    assert problem(reply(options=["a dog", "A dog.", "c", "d"])) == "duplicate_options"
    assert problem(reply(answer="E")) == "answer_not_in_options"
    assert problem(reply(answer="a dog runs in")) == "answer_not_in_options"
    assert problem(reply(reasoning="")) == "empty_reasoning"
    assert problem(reply(reasoning="The dog runs in after the door opens.")) == "no_timestamps"
    assert problem(reply(reasoning="At 00:45 the dog runs in."), duration_s=30.0) == "timestamp_outside_video"
    # within TIMESTAMP_SLACK_S (1 s) of the end: clip labels are rounded
    assert validate_question(
        reply(reasoning="At 00:30.5 the dog runs in."), category="temporal", duration_s=30.0
    )
    assert problem(reply(category="spatial")) == "wrong_category"
    assert problem(reply(question="A. is this an option?")) == "not_writable"


def test_validate_refined():
    original = (
        "At 00:12 the door opens. At 00:15 a dog runs in. Nothing else moves. Therefore the answer is A."
    )
    assert validate_refined('{"reasoning": "00:12 door opens; 00:15 dog runs in: answer A."}', answer="A",
                            original=original, duration_s=30) == "00:12 door opens; 00:15 dog runs in: answer A."  # fmt: skip
    with pytest.raises(InvalidOutput, match="contradicts_answer"):
        validate_refined('{"reasoning": "At 00:12 a cat. The answer is C."}', answer="A", original=original,
                         duration_s=30)  # fmt: skip
    # "option B is wrong" is no conclusion.
    assert validate_refined('{"reasoning": "At 00:12 option B is wrong; A fits."}', answer="A",
                            original=original, duration_s=30)  # fmt: skip
    with pytest.raises(InvalidOutput, match="not_concise"):
        validate_refined(json.dumps({"reasoning": original + " Also at 00:20."}), answer="A", original=original,
                         duration_s=30)  # fmt: skip
    with pytest.raises(InvalidOutput, match="no_timestamps"):
        validate_refined('{"reasoning": "The dog runs in: A."}', answer="A", original=original, duration_s=30)


# ------------------------------------------------------------------------------------------ filter and split


def test_score_responses_uses_the_training_reward():
    options = ["red", "blue", "green", "black"]
    texts = [
        "<think>blue at 00:05</think><answer>B</answer>",
        "<think>hm</think><answer>(B) blue</answer>",
        "<think>x</think><answer>C</answer>",
        "B",  # no answer tag: the reward gives 0
    ]
    assert score_responses(texts, "B", options) == {
        "pass_rate": 0.5, "scores": [1, 1, 0, 0], "answers": ["B", "B", "C", None],
    }  # fmt: skip


def test_rl_band_and_splits(tmp_path):
    assert [in_rl_band(p, 0.0, 1.0) for p in (0.0, 0.1, 0.9, 1.0)] == [False, True, True, False]
    assert [in_rl_band(p, 0.2, 0.8) for p in (0.2, 0.5, 0.8)] == [False, True, False]
    questions = [{"id": f"{v}/q{i}", "video": f"{v}.mp4"} for v in "abcdefghij" for i in range(2)]
    held = eval_videos(questions, 0.2, seed=3)
    assert len(held) == 2  # 4 of 20 questions = 0.2
    assert held == eval_videos(questions, 0.2, seed=3) and held != eval_videos(questions, 0.2, seed=4)
    assert eval_videos(questions, 0.0, seed=3) == set() and eval_videos(questions[:2], 0.5, seed=0) == set()
    rates = {q["id"]: [0.0, 0.3, 1.0, 0.7][i % 4] for i, q in enumerate(questions)}
    cfg = GenerateConfig(out=Path(tmp_path), eval_fraction=0.2, seed=3, filter_min=0.0, filter_max=1.0)
    splits = assign_splits(questions, rates, cfg)
    assert {q["video"] for q in splits["eval"]} == held
    assert all(0 < rates[q["id"]] < 1 for q in splits["rl"]) and all(
        rates[q["id"]] in (0, 1) for q in splits["sft"]
    )
    assert sum(len(v) for v in splits.values()) == 20
    no_filter = assign_splits(questions, None, cfg)
    assert no_filter["rl"] == [] and len(no_filter["sft"]) == 16


def test_config_checks(tmp_path):
    def check(**kw):
        return GenerateConfig(**{"out": tmp_path / "o", "stages": ("split",), **kw}).checked()

    with pytest.raises(ConfigError, match="--categories: unknown colour"):
        check(categories=("temporal", "colour"))
    with pytest.raises(ConfigError, match="--filter-min < --filter-max"):
        check(filter_min=0.5, filter_max=0.5)
    with pytest.raises(ConfigError, match="--eval-fraction"):
        check(eval_fraction=1.0)
    with pytest.raises(ConfigError, match="--per-video must be an integer >= 1"):
        check(per_video=0)
    with pytest.raises(ConfigError, match="needs --filter-model"):
        check(stages=("filter",))
    cfg = GenerateConfig(out=tmp_path, filter_model=None)
    assert "filter" not in cfg.stages_to_run() and cfg.stages_to_run()[-1] == "split"
