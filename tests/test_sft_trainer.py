"""CoT-SFT runs on the tiny model (CPU): the loss falls and the run folder is complete; bad rows and
unreadable videos are skipped and counted, or fail the run naming the row."""

from __future__ import annotations

import json

import pytest
import torch

from longrl.errors import DataError
from longrl.models.loading import load_model
from longrl.sft.trainer import run_sft
from longrl.train.config import SFTConfig
from longrl.train.config_io import load_config
from tests.train_fixtures import make_train_setup, sft_config, write_rows
from tests.videos import write_text


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_train_setup(tmp_path_factory.mktemp("sft"))


def test_loss_falls_and_the_run_folder_is_complete(setup, tmp_path):
    out = tmp_path / "run"
    cfg = sft_config(setup, out, {"run.steps": 10, "run.save_every": 4})
    summary = run_sft(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    losses = [r["loss"] for r in records]
    # From ~ln(vocab) = 6.7 for the random model; 10 steps at lr 1e-3 on 6 rows take it well below.
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses
    assert all(r["sequences"] == 2 and r["tokens"] > 0 and r["lr"] == pytest.approx(1e-3) for r in records)
    # The effective config is saved and loads back equal; checkpoints every 4 steps and at the end, the last 2 kept; summary.
    assert load_config(SFTConfig, out / "config.yaml") == cfg
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000008", "step_00000010"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["bad_rows"] == 0 and saved["unreadable_videos"] == 0 and saved["data"]["kept"] == 6
    assert saved["final_metrics"]["loss"] == pytest.approx(losses[-1])
    # The final HF folder holds the trained weights: they differ from the initial model's and equal the
    # last checkpoint's.
    final = load_model(out / "final").adapter.model.state_dict()
    initial = load_model(setup["model"]).adapter.model.state_dict()
    from safetensors.torch import load_file

    last = load_file(str(out / "checkpoints" / "step_00000010" / "model.safetensors"))
    changed = [k for k in initial if not torch.equal(initial[k], final[k])]
    assert changed and all(torch.equal(final[k], last[k]) for k in changed)


def test_bad_rows_and_unreadable_videos_are_skipped_and_counted(setup, tmp_path):
    write_text(setup["video_root"] / "broken.mp4")
    good = json.loads(setup["data"].read_text().splitlines()[0])
    rows = [
        {**good, "id": "g0"},
        {**good, "id": "g1", "video": "v1.mp4"},
        {**good, "id": "g2", "video": "v2.mp4"},
        {**good, "id": "unreadable", "video": "broken.mp4"},
        {**good, "id": "no_reasoning", "reasoning": ""},
        {"id": "no_answer", "question": "q", "options": ["a", "b"], "video": "v0.mp4"},
    ]
    data = write_rows(tmp_path / "mixed.jsonl", rows)
    paths = {**setup, "data": data}
    out = tmp_path / "run"
    summary = run_sft(sft_config(paths, out, {"run.steps": 4, "batch_size": 2}))
    assert summary["bad_rows"] == 2
    assert summary["data"]["skipped"]["missing_field"] == 1
    assert summary["data"]["skipped"]["missing_reasoning"] == 1
    # 4 steps x 2 rows walk the 4 loaded rows twice: the broken video is met once, then never drawn again.
    assert summary["unreadable_videos"] == 1
    assert any("unreadable" in p and "broken.mp4" in p for p in summary["problems"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["sequences"] for r in records] == [2, 2, 2, 2]  # batches were refilled

    fail = sft_config({**setup, "data": write_rows(tmp_path / "one_bad.jsonl", rows[:4])}, tmp_path / "f",
                      {"run.steps": 4, "data.on_bad_row": "fail"})  # fmt: skip
    with pytest.raises(DataError, match=r"row id 'unreadable': unreadable video: .*broken.mp4"):
        run_sft(fail)
