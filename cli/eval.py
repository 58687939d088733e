"""`longrl eval`: answer a long-video benchmark with a model, per category and duration, across frame counts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from longrl.errors import ConfigError

BENCHMARK_HELP = (
    "longvideo-reason, video-mme, mc (multiple-choice JSONL) or open-ended (ActivityNet-QA style)."
)


def _frame_counts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"--frames {text}: expected a count or comma-separated counts, e.g. 32,64,128"
        ) from None
    if not counts or min(counts) < 1:
        raise ConfigError(f"--frames {text}: expected positive counts, e.g. 32,64,128")
    return counts


def _judge_config(backend, model, base_url, api_key_env, workers):
    from longrl.eval.judge import JudgeConfig

    if backend is None:
        if model or base_url or api_key_env:
            raise ConfigError("--judge-model / --judge-base-url / --judge-api-key-env need --judge-backend")
        return None
    if not model:
        raise ConfigError(f"--judge-backend {backend} needs --judge-model")
    if workers < 1:
        raise ConfigError(f"--judge-workers must be >= 1, got {workers}")
    return JudgeConfig(backend, model, base_url, api_key_env, workers)


def eval_command(
    model: Annotated[Path, typer.Option(help="HF model folder to evaluate.")],
    benchmark: Annotated[str, typer.Option(help=BENCHMARK_HELP)],
    data: Annotated[Path, typer.Option(help="Benchmark file: JSON / JSONL (Video-MME: also .parquet).")],
    out: Annotated[Path, typer.Option(help="Output folder (a rerun into it resumes).")],
    video_root: Annotated[Path | None, typer.Option(help="Folder the videos are in (default: the data file's folder).")] = None,
    frames: Annotated[str | None, typer.Option(help="Frames per video, or a sweep: 32,64,128 (default 64).")] = None,
    fps: Annotated[float | None, typer.Option(help="Sample at this rate instead of --frames.")] = None,
    max_frames: Annotated[int, typer.Option(help="Cap on frames when sampling by --fps.")] = 768,
    samples: Annotated[int, typer.Option(help="Responses per question (k > 1: mean accuracy and pass@k).")] = 1,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: 0 = greedy for 1 sample, 1.0 for k > 1).")] = None,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1 = off).")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="Response length cap in tokens.")] = 1024,
    batch_size: Annotated[int, typer.Option(help="Questions per generate call (per data-parallel group).")] = 8,
    subtitles: Annotated[bool, typer.Option("--subtitles", help="Insert the .srt lines of the sampled frames into each question.")] = False,
    subtitle_root: Annotated[Path | None, typer.Option(help="Folder of the .srt files (default: the video root).")] = None,
    subtitle_rule: Annotated[str, typer.Option(help="frames: lines shown at a sampled frame (Video-MME); span: lines overlapping the sampled span.")] = "frames",
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N usable questions.")] = None,
    engine: Annotated[str, typer.Option(help="Rollout engine.")] = "hf",
    nproc: Annotated[int, typer.Option(help="Processes on this machine (relaunches under torchrun when > 1).")] = 1,
    sp: Annotated[int, typer.Option(help="Sequence-parallel size: ranks sharing each prompt. Shards the vision encode, the prefill and the KV cache (each rank keeps 1/S of it; decoding merges the ranks' attention), for prompts too long for one device. Needs --engine hf.")] = 1,
    sp_attn: Annotated[str, typer.Option(help="Attention of the sequence-parallel prefill: ring, ulysses or auto (Ulysses when --sp divides the head counts).")] = "auto",
    embed_cache_dir: Annotated[Path | None, typer.Option(help="Disk tier of the video-embedding cache (shared across runs).")] = None,
    video_backend: Annotated[str, typer.Option(help="Decoder: auto (decord, then PyAV), decord or pyav.")] = "auto",
    on_bad_row: Annotated[str, typer.Option(help="skip: count bad rows and go on; fail: stop at the first.")] = "skip",
    plot: Annotated[bool, typer.Option("--plot", help="Also write accuracy_vs_frames.png.")] = False,
    seed: Annotated[int, typer.Option(help="Sampling seed (each batch's seed derives from it and its ids).")] = 0,
    dtype: Annotated[str, typer.Option(help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16.")] = "auto",
    require_answer_tag: Annotated[bool, typer.Option(help="Score only answers inside <answer> tags, as the RL reward does; --no-require-answer-tag also reads untagged replies.")] = True,
    judge_backend: Annotated[str | None, typer.Option(help="LLM judge for open-ended answers: openai (or hf, vllm). Default: normalized exact match.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="The judge's model name (served name for openai).")] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="The judge server's URL, e.g. http://localhost:8000/v1.")] = None,
    judge_api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the judge's API key.")] = None,
    judge_workers: Annotated[int, typer.Option(help="Judge requests in flight at once.")] = 8,
) -> None:  # fmt: skip
    """Answer a benchmark (greedy by default), score with the RL reward's parser, and write predictions.jsonl,
    metrics.json and report.md: accuracy with 95% intervals overall, per category, per duration, per frame count."""
    from longrl.eval.runner import EvalConfig, run_eval

    counts = _frame_counts(frames)
    judge = _judge_config(judge_backend, judge_model, judge_base_url, judge_api_key_env, judge_workers)
    config = EvalConfig(
        model=model, benchmark=benchmark, data=data, out=out, video_root=video_root,
        frames=counts if counts is not None or fps is not None else [64], fps=fps, max_frames=max_frames,
        samples=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        batch_size=batch_size, subtitles=subtitles, subtitle_root=subtitle_root, subtitle_rule=subtitle_rule,
        limit=limit, engine=engine, sp=sp, sp_attn=sp_attn, embed_cache_dir=embed_cache_dir,
        video_backend=video_backend, on_bad_row=on_bad_row, plot=plot, seed=seed, dtype=dtype,
        require_answer_tag=require_answer_tag, judge=judge,
    )  # fmt: skip
    config.check()
    from longrl.cli.launch import under_torchrun

    if under_torchrun():  # a worker: the world size is torchrun's (init_parallel checks it against --sp)
        nproc = 1
    elif nproc < 1 or nproc % sp:
        raise ConfigError(f"--nproc {nproc} must be a positive multiple of --sp {sp}")
    from longrl.cli.launch import relaunch_under_torchrun, torchrun_args

    code = relaunch_under_torchrun(nproc, torchrun_args())
    if code is not None:
        raise typer.Exit(code)
    metrics = _run_with_progress(config, run_eval)
    if metrics is not None:
        _print_summary(metrics, out)


def _run_with_progress(config, run_eval):
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun only global rank 0 reports
        return run_eval(config)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        tasks: dict[str, int] = {}

        def on_progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done)

        return run_eval(config, on_progress)


def _print_summary(metrics: dict, out: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from longrl.eval.report import table_rows

    console = Console()
    columns, rows = table_rows(metrics)
    table = Table(title=escape(f"{metrics['benchmark']}: accuracy % [95% CI] (n)"))
    table.add_column("")
    for column in columns:
        table.add_column(escape(column), justify="right")
    for label, cells in rows:
        table.add_row(escape(label), *(escape(c) for c in cells))  # category names are data, not markup
    console.print(table)
    load = metrics["load"]
    line = f"data: {load['kept']} of {load['total']} rows usable"
    if metrics["bad_rows"]:
        skipped = ", ".join(f"{k}: {v}" for k, v in load["skipped"].items() if v)
        line += f"; {metrics['bad_rows']} bad rows skipped ({skipped})"
    console.print(line, markup=False, highlight=False)
    console.print(
        f"wrote {out / 'metrics.json'}, {out / 'report.md'} and predictions per setting", markup=False
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
