"""`longrl train sft --nproc 2 --sp 2` re-runs itself under torchrun and trains as one process would."""

from __future__ import annotations

import json
import os

import pytest

from longrl.sft.trainer import run_sft
from tests.helpers import run_cli
from tests.train_fixtures import make_train_setup, sft_config


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # torchrun + 2 workers importing torch/transformers: ~30 s here
def test_nproc_2_sp_2_under_torchrun_matches_one_process(tmp_path, monkeypatch):
    for var in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    paths = make_train_setup(tmp_path / "setup", num_rows=4, num_videos=2)
    out = tmp_path / "sp2"
    # `--nproc` is an ambiguous abbreviation of torchrun's --nproc-per-node: torchrun must not parse it.
    result = run_cli(
        "train", "sft", "--model", str(paths["model"]), "--data", str(paths["data"]), "--video-root",
        str(paths["video_root"]), "--out", str(out), "--steps", "2", "--batch-size", "2", "--frames", "4",
        "--lr", "1e-3", "--nproc", "2", "--sp", "2", "--device", "cpu", "--set", "data.isolate_decode=false",
        "--set", "run.save_every=0", "--set", "optim.schedule=constant", "--set", "max_response_tokens=64",
        cwd=tmp_path, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.environ.get("WORLD_SIZE") is None
    single = tmp_path / "single"
    run_sft(sft_config(paths, single, {"run.steps": 2}))
    sp_losses, single_losses = losses(out), losses(single)
    assert len(sp_losses) == 2
    # Step 1: same weights, same batch; only ring attention's reordered fp32 sums differ.
    assert sp_losses[0] == pytest.approx(single_losses[0], rel=1e-6)
    # Step 2 follows one AdamW update from gradients equal to ~1e-6: the losses stay within 1e-4.
    assert sp_losses[1] == pytest.approx(single_losses[1], rel=1e-4)
    assert (out / "final" / "model.safetensors").is_file()
