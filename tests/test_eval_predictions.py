"""predictions.jsonl on resume: which records are kept, and the file rewritten to hold exactly those."""

from __future__ import annotations

import json
from pathlib import Path

from longrl.eval.predictions import PredictionWriter, load_predictions


def _line(rid, error=None) -> str:
    return json.dumps({"id": rid, "correct": [True], "error": error})


def test_missing_file_is_empty(tmp_path: Path):
    assert load_predictions(tmp_path / "predictions.jsonl") == {}
    assert not (tmp_path / "predictions.jsonl").exists()


def test_clean_file_is_left_alone(tmp_path: Path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(_line("a") + "\n" + _line("b") + "\n")
    before = path.stat().st_mtime_ns, path.stat().st_ino
    assert list(load_predictions(path)) == ["a", "b"]
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before


def test_broken_repeated_failed_and_unterminated_records(tmp_path: Path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(
        "\n".join(
            [_line("a"), _line("a"), "{not json", _line("v", error="cannot decode"), "", "[1, 2]", _line("z")]
        )
    )  # the last record is complete but its newline was never written
    kept = load_predictions(path)
    assert list(kept) == ["a", "z"]
    assert path.read_text() == _line("a") + "\n" + _line("z") + "\n"
    with PredictionWriter(path) as writer:
        writer.write([{"id": "n", "error": None}])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "z", "n"]
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]  # no temp file left behind
