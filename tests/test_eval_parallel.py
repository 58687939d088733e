"""`run_eval` under a 2-process gloo world (`longrl.parallel.run_local`, as torchrun would start it) against
the single-process run (the reference): sp=2 shards every video's vision encode, and every prompt's prefill,
KV cache and decoding (`SPHFEngine`), over both ranks; dp=2 splits the questions. Greedy decoding of the fp32
tiny model must give the same responses and parsed answers, every question answered once, and only rank 0
returns metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from videos import write_undecodable, write_video

from longrl.eval.runner import EvalConfig, run_eval
from longrl.models import make_tiny
from longrl.parallel.launch import run_local

TIMEOUT_S = 240


def _worker(config: EvalConfig):
    """run_eval's result, and the sp size of every prompt prefill this rank ran with `SPHFEngine`."""
    from longrl.rollout.sp_engine import SPHFEngine

    prefills = []
    prefill = SPHFEngine.prefill

    def counting(self, *args, **kwargs):
        prefills.append(self.state.sp_size)
        return prefill(self, *args, **kwargs)

    SPHFEngine.prefill = counting
    return run_eval(config), prefills


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_parallel")
    make_tiny(root / "tiny")
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", 24, 8)
    write_video(videos / "b.mp4", 40, 8)
    write_undecodable(videos / "a.mp4", videos / "broken.mp4")
    rows = [
        {"id": f"q{i}", "question": f"Which colour is shown in part {i}?", "options": ["red", "green", "blue"],
         "answer": "ABC"[i % 3], "video": ["a.mp4", "b.mp4", "broken.mp4"][i % 3], "category": "c"}
        for i in range(5)
    ]  # fmt: skip
    (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _config(bench: Path, out: str, sp: int) -> EvalConfig:
    return EvalConfig(
        model=bench / "tiny", benchmark="mc", data=bench / "mc.jsonl", video_root=bench / "videos",
        out=bench / out, frames=(4,), max_new_tokens=12, batch_size=2, sp=sp, require_answer_tag=False,
    )  # fmt: skip


def _records(bench: Path, out: str) -> dict[str, dict]:
    lines = (bench / out / "frames_4" / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len({r["id"] for r in records})
    return {r["id"]: r for r in records}


@pytest.mark.parametrize("sp", [2, 1], ids=["sp2", "dp2"])
def test_two_ranks_match_one_process(bench: Path, sp: int):
    if not (bench / "single").exists():
        run_eval(_config(bench, "single", 1))
    reference = _records(bench, "single")
    out = f"world2_sp{sp}"
    results, prefills = zip(*run_local(_worker, 2, _config(bench, out, sp), timeout_s=TIMEOUT_S), strict=True)
    assert results[1] is None and results[0]["n"] == 4 and results[0]["errors"] == 1
    # sp 2: both ranks prefill each of the 4 decodable prompts together (sequence-parallel); dp: plain hf.
    assert list(prefills) == ([[2] * 4] * 2 if sp == 2 else [[], []])
    records = _records(bench, out)
    assert sorted(records) == sorted(reference)
    for rid, ref in reference.items():
        got = records[rid]
        assert got["responses"] == ref["responses"], rid
        assert got["parsed"] == ref["parsed"] and got["correct"] == ref["correct"], rid
        assert bool(got["error"]) == bool(ref["error"]), rid
    single = json.loads((bench / "single" / "metrics.json").read_text())
    assert results[0]["by_setting"] == single["by_setting"]
