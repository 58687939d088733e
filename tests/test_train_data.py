"""The training data stream (longrl/train/data.py): seeded epochs, dp shards, exact resume, exclusions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longrl.data.schema import Example
from longrl.errors import ConfigError, DataError
from longrl.parallel.groups import single_process_state
from longrl.train.config import DataConfig
from longrl.train.data import (
    MISSING_REASONING,
    TrainData,
    gather_positions,
    load_train_data,
    restore_positions,
)


def examples(n: int) -> list[Example]:
    return [
        Example(
            f"q{i}", f"question {i}", ["a", "b"], "A", "because", "", "video", Path(f"/v/{i}.mp4"), f"{i}.mp4"
        )
        for i in range(n)
    ]


def ids(batch: list[Example]) -> list[str]:
    return [ex.id for ex in batch]


def test_each_epoch_is_the_seeded_permutation():
    data = TrainData(examples(7), seed=3, shuffle=True)
    first, second = data.next_batch(7), data.next_batch(7)
    expect0 = np.random.default_rng([3, 0]).permutation(7)
    expect1 = np.random.default_rng([3, 1]).permutation(7)
    assert ids(first) == [f"q{i}" for i in expect0]
    assert ids(second) == [f"q{i}" for i in expect1]
    assert sorted(ids(first)) == sorted(ids(second)) == sorted(f"q{i}" for i in range(7))
    assert data.epoch == 1


def test_same_seed_same_order_other_seed_other_order_no_shuffle_file_order():
    a = ids(TrainData(examples(20), seed=1).next_batch(20))
    assert a == ids(TrainData(examples(20), seed=1).next_batch(20))
    assert a != ids(TrainData(examples(20), seed=2).next_batch(20))
    assert ids(TrainData(examples(5), seed=1, shuffle=False).next_batch(7)) == [
        "q0", "q1", "q2", "q3", "q4", "q0", "q1",
    ]  # fmt: skip


@pytest.mark.parametrize(("n", "dp"), [(10, 3), (8, 2), (5, 5)])
def test_dp_shards_are_disjoint_and_cover_each_epoch(n, dp):
    ranks = [TrainData(examples(n), seed=0, dp_rank=r, dp_size=dp) for r in range(dp)]
    for epoch in range(2):
        seen = []
        for r, data in enumerate(ranks):
            shard = len(range(r, n, dp))  # this rank's share of an epoch
            seen.append(ids(data.next_batch(shard)))
            assert data.epoch == epoch
        flat = [x for part in seen for x in part]
        assert len(flat) == len(set(flat)) == n  # disjoint, and together every example once
        order = TrainData(examples(n), seed=0).epoch_order(epoch)
        assert seen[0] == [f"q{i}" for i in order[0::dp]]  # rank 0 takes every dp-th entry


def test_position_restores_exactly_across_epochs_and_exclusions():
    data = TrainData(examples(6), seed=5, dp_rank=1, dp_size=2)
    data.next_batch(4)  # past the end of epoch 0 (3 per rank)
    data.exclude(data.examples[2])
    position = json.loads(json.dumps(data.position()))  # what a checkpoint stores
    expected = ids(data.next_batch(9))
    again = TrainData(examples(6), seed=5, dp_rank=1, dp_size=2)
    again.restore(position)
    assert ids(again.next_batch(9)) == expected
    assert "q2" not in expected


def test_excluded_examples_never_come_back_and_all_excluded_is_a_data_error():
    data = TrainData(examples(4), seed=0)
    for ex in data.examples[:3]:
        data.exclude(ex)
    assert set(ids(data.next_batch(6))) == {"q3"}
    data.exclude(data.examples[3])
    with pytest.raises(DataError, match="no usable training example"):
        data.next_batch(1)


def test_restore_refuses_other_data_seed_or_layout():
    position = TrainData(examples(6), seed=5).position()
    for other in (
        TrainData(examples(7), seed=5),
        TrainData(examples(6), seed=6),
        TrainData(examples(6), seed=5, shuffle=False),
    ):
        with pytest.raises(ConfigError, match="differ from the checkpoint"):
            other.restore(position)
    with pytest.raises(ConfigError, match="data-parallel ranks"):
        TrainData(examples(6), seed=5, dp_rank=0, dp_size=2).restore(position)
    with pytest.raises(ConfigError, match="incomplete"):
        TrainData(examples(6), seed=5).restore({"epoch": 1})


def test_fewer_rows_than_dp_ranks_is_a_config_error():
    with pytest.raises(ConfigError, match="fewer than the 4 data-parallel ranks"):
        TrainData(examples(3), seed=0, dp_rank=0, dp_size=4)


def test_gather_and_restore_positions_single_process():
    data = TrainData(examples(5), seed=1)
    data.next_batch(3)
    positions = gather_positions(data, single_process_state())
    assert positions == [data.position()]
    expected = ids(data.next_batch(4))
    again = TrainData(examples(5), seed=1)
    restore_positions(again, positions)
    assert ids(again.next_batch(4)) == expected
    with pytest.raises(ConfigError, match="2 data-parallel ranks"):
        restore_positions(again, positions * 2)


def _write_rows(tmp_path: Path) -> Path:
    (tmp_path / "a.mp4").write_text("existence is all the loader checks")
    rows = [
        {
            "id": "r0",
            "question": "q?",
            "options": ["x", "y"],
            "answer": "A",
            "reasoning": "r",
            "video": "a.mp4",
        },
        {
            "id": "r1",
            "question": "q?",
            "options": ["x", "y"],
            "answer": "B",
            "reasoning": " ",
            "video": "a.mp4",
        },
        {
            "id": "r2",
            "question": "q?",
            "options": ["x", "y"],
            "answer": "C",
            "reasoning": "r",
            "video": "a.mp4",
        },
        {
            "id": "r3",
            "question": "q?",
            "options": ["x", "y"],
            "answer": "B",
            "reasoning": "r",
            "video": "a.mp4",
        },
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_train_data_counts_bad_rows_and_missing_reasoning(tmp_path):
    path = _write_rows(tmp_path)
    data, report = load_train_data(DataConfig(train=str(path)), seed=0, require_reasoning=True)
    assert sorted(ex.id for ex in data.examples) == ["r0", "r3"]
    assert report.skipped == {"answer_not_in_options": 1, MISSING_REASONING: 1}
    assert (report.total, report.kept) == (4, 2)
    data, _ = load_train_data(DataConfig(train=str(path)), seed=0)  # RL: reasoning is not needed
    assert len(data) == 3


def test_load_train_data_fail_mode_names_the_row(tmp_path):
    path = _write_rows(tmp_path)
    with pytest.raises(DataError, match=r"train.jsonl:3: answer_not_in_options"):
        load_train_data(DataConfig(train=str(path), on_bad_row="fail"), seed=0)
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows[:2]) + "\n")
    with pytest.raises(DataError, match=r"row id 'r1': missing_reasoning"):
        load_train_data(DataConfig(train=str(path), on_bad_row="fail"), seed=0, require_reasoning=True)
