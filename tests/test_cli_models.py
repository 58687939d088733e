"""`longrl models make-tiny`: writes a loadable HF folder; refuses to clobber (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli


def test_make_tiny_writes_a_qwen2_5_vl_folder_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    result = run_cli("models", "make-tiny", str(out), "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    again = run_cli("models", "make-tiny", str(out), cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [again.stderr.strip()]  # exactly one line
    assert str(out) in again.stderr and "--overwrite" in again.stderr
