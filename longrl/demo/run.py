"""`longrl demo`: the whole recipe on the built-in tiny model, on one CPU, in minutes.

    synthetic long-video data (generate-data --source synthetic, ordinal questions)
    -> base model (tiny Qwen2.5-VL, random; its vision projector calibrated on the SFT videos)
    -> CoT-SFT -> eval -> generate-data's filter stage with the SFT model on the RL pool
    -> GRPO with MR-SP on `nproc` local processes (gloo), embedding cache on, PPO-ptx on the SFT rows
    -> eval -> report

Output folder (every stage resumes from what it finds, so rerunning the same command after a kill goes on):

    base_model/            the tiny model the run starts from (calibrate.json: its projector calibration)
    data/sft data/rl data/eval   generate-data output folders (synthetic videos + rows, manifest.json)
    sft/  rl/              training run folders (config.yaml, metrics.jsonl, checkpoints/, final/)
    eval_sft/ eval_rl/     eval output folders (predictions, metrics.json, report.md)
    model/                 the trained model (HF folder)
    reward_curve.png       the RL reward curve
    demo.json  demo.md     the final table (chance, after SFT, after RL; overall and per category, 95% CIs),
                           RL's paired gain over SFT, the stage times and the plan
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from longrl.atomic import write_text_atomic
from longrl.demo.plan import DemoPlan, plan_for
from longrl.demo.report import DemoReport, accuracy_table, paired_gain
from longrl.errors import ConfigError, LongRLError

MARKER = "demo.json"
CHANCE = 0.25  # four options per question


class StageClock:
    """Wall time of each named stage, in order."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self.console.print(f"[dim]{name}: {self.seconds[name]:.1f} s[/dim]")


def check_out_dir(out: Path) -> None:
    """A new or empty folder, or one an earlier `longrl demo` wrote (it is continued); anything else: exit 2."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(
            f"--out {out} is not empty and was not written by `longrl demo`; nothing in it is touched: "
            "choose a new or empty folder"
        )


def _write_marker(out: Path, content: dict[str, Any]) -> None:
    write_text_atomic(out / MARKER, json.dumps(content, indent=2) + "\n")


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    console: Console | None = None,
    plan: DemoPlan | None = None,
) -> DemoReport:
    """Run every stage of the demo into `out` and return its report (also written to demo.json / demo.md)."""
    out = Path(out).expanduser().resolve()
    console = console or Console()
    plan = plan or plan_for(quick)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / MARKER).read_text()) if (out / MARKER).is_file() else None
    if previous is not None and (previous.get("plan") != plan.name or previous.get("seed") != seed):
        raise ConfigError(
            f"{out} holds a demo run with plan {previous.get('plan')!r} and seed {previous.get('seed')}; "
            "rerun with the same --quick/--seed to continue it, or choose a new --out"
        )
    if previous is not None and previous.get("sizes") != asdict(plan):
        raise ConfigError(
            f"{out} holds a demo run from another version of `longrl demo` (its plan's sizes differ); "
            "choose a new --out"
        )
    _write_marker(out, {"plan": plan.name, "seed": seed, "sizes": asdict(plan), "complete": False})
    clock = StageClock(console)
    start = time.perf_counter()

    with clock.stage("1/7 data: synthetic long videos (generate-data --source synthetic)"):
        data = _synthetic_data(out / "data", plan, seed)
    with clock.stage("2/7 tiny model, its vision projector calibrated on the SFT videos"):
        base = _base_model(out / "base_model", data["sft"], plan, seed)
    with clock.stage("3/7 CoT-SFT"):
        sft_model = _sft(out / "sft", base, data["sft"], plan, seed)
    with clock.stage("4/7 eval after SFT"):
        eval_sft = _evaluate(out / "eval_sft", sft_model, data["eval"], plan, seed)
    with clock.stage("5/7 filter the RL pool with the SFT model (generate-data filter stage)"):
        rl_rows = _filter_rl_pool(out / "data" / "rl", sft_model, plan, seed, console)
    with clock.stage(f"6/7 GRPO with MR-SP on {plan.nproc} processes"):
        rl_model = _rl(out / "rl", sft_model, rl_rows, data["sft"], plan, seed)
    with clock.stage("7/7 eval after RL"):
        eval_rl = _evaluate(out / "eval_rl", rl_model, data["eval"], plan, seed)

    _publish_model(rl_model, out / "model")
    curve = _reward_curve(out / "rl", out / "reward_curve.png")
    report = DemoReport(
        plan=plan,
        seed=seed,
        chance=CHANCE,
        after_sft=eval_sft,
        after_rl=eval_rl,
        stage_seconds=clock.seconds,
        total_seconds=time.perf_counter() - start,
        reward_curve=curve,
        model_dir=out / "model",
        rl_rows=_count_rows(rl_rows),
        gain=paired_gain(
            _predictions(out / "eval_sft", plan.frames), _predictions(out / "eval_rl", plan.frames)
        ),
    )
    report.write(out)
    _write_marker(
        out, {"plan": plan.name, "seed": seed, "sizes": asdict(plan), "complete": True, **report.to_dict()}
    )
    console.print(accuracy_table(report))
    console.print(report.footer())
    return report


# ---- stages ----------------------------------------------------------------------------------------------
def _base_model(folder: Path, sft_rows: Path, plan: DemoPlan, seed: int) -> Path:
    """The tiny model (random weights from `seed`), its vision projector calibrated (centred, and whitened
    unless `plan.calibration_whiten` is None) on the first `plan.calibration_videos` videos of the SFT rows
    (longrl.models.calibrate); built beside `folder`, then renamed."""
    from longrl.data import load_examples
    from longrl.models import make_tiny
    from longrl.models.calibrate import calibrate_vision_projector

    if (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a half-written folder of our own from a killed run
    shutil.rmtree(folder, ignore_errors=True)
    make_tiny(tmp, seed=seed)
    examples, _ = load_examples(sft_rows, None, on_bad_row="fail")
    videos = list(dict.fromkeys(ex.video for ex in examples))[: plan.calibration_videos]  # distinct, in order
    report = calibrate_vision_projector(tmp, videos, num_frames=plan.frames, whiten=plan.calibration_whiten)
    write_text_atomic(tmp / "calibrate.json", json.dumps(asdict(report), indent=2) + "\n")
    os.replace(tmp, folder)
    return folder


def _pipeline(folder: Path, plan: DemoPlan, seed: int, num_videos: int, stages: tuple[str, ...], **kw: Any):
    from longrl.data.generate.config import GenerateConfig
    from longrl.data.generate.pipeline import run_pipeline

    cfg = GenerateConfig(
        out=folder,
        source="synthetic",
        stages=stages,
        synthetic_videos=num_videos,
        synthetic_frames=plan.video_frames,
        synthetic_fps=plan.video_fps,
        per_video=plan.questions_per_video,
        synthetic_questions=plan.questions,
        eval_fraction=0.0,
        seed=seed,
        **kw,
    )
    return run_pipeline(cfg, show_progress=True)


def _synthetic_data(folder: Path, plan: DemoPlan, seed: int) -> dict[str, Path]:
    """Three disjoint sets of videos (different seeds): SFT rows, the RL pool (filtered later), eval rows."""
    _pipeline(folder / "sft", plan, 1000 * seed + 1, plan.sft_videos, ("synthetic", "split"))
    _pipeline(folder / "rl", plan, 1000 * seed + 2, plan.rl_videos, ("synthetic",))
    _pipeline(folder / "eval", plan, 1000 * seed + 3, plan.eval_videos, ("synthetic", "split"))
    # With eval_fraction 0 the split stage puts every question of a folder in its sft.jsonl.
    return {"sft": folder / "sft" / "sft.jsonl", "eval": folder / "eval" / "sft.jsonl"}


def _common_config(rows: Path, run_dir: Path, plan: DemoPlan, seed: int, steps: int) -> dict[str, Any]:
    return {
        "data": {"train": str(rows), "frames": plan.frames, "isolate_decode": False},
        "run": {"out": str(run_dir), "steps": steps, "save_every": 0, "seed": seed, "resume": "auto"},
    }


def _sft(run_dir: Path, base: Path, rows: Path, plan: DemoPlan, seed: int) -> Path:
    from longrl.sft.trainer import run_sft
    from longrl.train.config import SFTConfig
    from longrl.train.config_io import config_from_dict

    final = run_dir / "final"
    if (final / "config.json").is_file():
        return final
    cfg = _common_config(rows, run_dir, plan, seed, plan.sft_steps)
    cfg.update(
        model={"path": str(base)},
        optim={"lr": plan.sft_lr, "warmup_steps": max(1, plan.sft_steps // 20)},
        batch_size=plan.sft_batch,
    )
    run_sft(config_from_dict(SFTConfig, cfg))
    return final


def _evaluate(folder: Path, model: Path, rows: Path, plan: DemoPlan, seed: int) -> dict[str, Any]:
    from longrl.eval.runner import EvalConfig, run_eval

    metrics = run_eval(
        EvalConfig(
            model=model,
            benchmark="longvideo-reason",
            data=rows,
            out=folder,
            frames=(plan.frames,),
            max_new_tokens=plan.max_new_tokens,
            batch_size=50,
            seed=seed,
        )
    )
    assert metrics is not None  # one process: rank 0
    return metrics


def _filter_rl_pool(folder: Path, sft_model: Path, plan: DemoPlan, seed: int, console: Console) -> Path:
    """generate-data's filter + split on the RL pool: questions the SFT model gets right sometimes (0 < pass
    rate < 1 over `filter_samples` answers) go to rl.jsonl. Too few of them (the model is always right or
    always wrong on the pool): the whole pool is used, and the demo says so."""
    _pipeline(
        folder,
        plan,
        1000 * seed + 2,
        plan.rl_videos,
        ("filter", "split"),
        filter_model=sft_model,
        filter_samples=plan.filter_samples,
        filter_frames=plan.frames,
        filter_max_tokens=plan.max_new_tokens,
        filter_batch_size=16,
    )
    rl_rows = folder / "rl.jsonl"
    if _count_rows(rl_rows) >= plan.rl_batch:
        return rl_rows
    console.print(
        f"[yellow]only {_count_rows(rl_rows)} RL-pool questions have 0 < pass rate < 1; "
        "GRPO uses the whole pool instead[/yellow]"
    )
    return folder / "sft.jsonl"


def _rl(run_dir: Path, sft_model: Path, rows: Path, sft_rows: Path, plan: DemoPlan, seed: int) -> Path:
    """`longrl train rl --nproc N --sp N --config rl.yaml` in a child process (torchrun, gloo), with the SFT
    rows as PPO-ptx's supervised rows."""
    from longrl.train.config import RLConfig
    from longrl.train.config_io import config_from_dict, save_config

    final = run_dir / "final"
    if (final / "config.json").is_file():
        return final
    cfg = _common_config(rows, run_dir, plan, seed, plan.rl_steps)
    cfg["data"]["ptx"] = str(sft_rows) if plan.rl_ptx_coef else None
    cfg.update(
        model={"path": str(sft_model)},
        optim={"lr": plan.rl_lr, "warmup_steps": 0, "schedule": "constant"},
        algo={
            "dynamic_sampling": plan.rl_dynamic_sampling,
            "kl_coef": plan.rl_kl_coef,
            "ptx_coef": plan.rl_ptx_coef,
        },
        parallel={"nproc": plan.nproc, "sp": plan.nproc},
        rollout={
            "n": plan.rl_group,
            "temperature": plan.rl_temperature,
            "max_new_tokens": plan.max_new_tokens,
        },
        batch_size=plan.rl_batch,
    )
    config_path = run_dir.parent / "rl.yaml"
    save_config(config_from_dict(RLConfig, cfg), config_path)
    cmd = [sys.executable, "-m", "longrl.cli.app", "train", "rl", "--config", str(config_path)]
    cmd += ["--nproc", str(plan.nproc), "--sp", str(plan.nproc)]
    code = subprocess.call(cmd)
    if code != 0:
        raise LongRLError(
            f"the GRPO stage failed (exit code {code}); its log is above, its run folder {run_dir}"
        )
    return final


def _publish_model(final: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(final, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _reward_curve(run_dir: Path, png: Path) -> Path | None:
    from longrl.train.plot import plot_run

    try:
        return plot_run(run_dir, png)
    except LongRLError:
        return None


def _predictions(eval_folder: Path, frames: int) -> dict[str, dict[str, Any]]:
    """`longrl eval`'s per-question records of one demo eval at `frames` frames, by question id (read as an
    eval resume reads them: a line for a video that failed to decode is dropped from the file)."""
    from longrl.eval.predictions import load_predictions
    from longrl.eval.runner import PREDICTIONS, frames_label

    return load_predictions(eval_folder / frames_label(frames) / PREDICTIONS)


def _count_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open() as f:
        return sum(1 for line in f if line.strip())
