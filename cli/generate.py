"""`longrl generate-data`: long videos -> LongVideo-Reason-style reasoning data (SFT, RL and eval files)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

STAGES_HELP = (
    "Comma-separated subset of scan,segment,caption,questions,refine,filter,split (--source videos) or "
    "synthetic,filter,split (--source synthetic) (default: all; filter only with --filter-model)."
)


def generate_data(
    out: Annotated[Path, typer.Option(help="Output folder; rerunning the same command into it resumes.")],
    videos: Annotated[Path | None, typer.Option(help="Folder of videos (searched recursively) or a file listing video paths.")] = None,
    video_root: Annotated[Path | None, typer.Option(help="Folder the output rows' video paths are relative to (default: --videos, or the list file's folder).")] = None,
    stages: Annotated[str | None, typer.Option(help=STAGES_HELP)] = None,
    source: Annotated[str, typer.Option(help="videos (caption real videos) or synthetic (procedural videos with known answers).")] = "videos",
    captioner: Annotated[str | None, typer.Option(help="Captioner backend: openai, hf or vllm.")] = None,
    captioner_model: Annotated[str | None, typer.Option(help="Captioner model: served name (openai) or model folder (hf, vllm).")] = None,
    captioner_base_url: Annotated[str | None, typer.Option(help="Captioner endpoint, e.g. http://localhost:8000/v1 (default: --base-url).")] = None,
    reasoner: Annotated[str | None, typer.Option(help="Reasoner backend (questions, refine): openai, hf or vllm.")] = None,
    reasoner_model: Annotated[str | None, typer.Option(help="Reasoner model: served name (openai) or model folder (hf, vllm).")] = None,
    reasoner_base_url: Annotated[str | None, typer.Option(help="Reasoner endpoint (default: --base-url).")] = None,
    base_url: Annotated[str | None, typer.Option(help="Endpoint for both backends when their own is not given.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Name of the environment variable holding the API key (never logged or written).")] = None,
    categories: Annotated[str, typer.Option(help="Question categories, comma-separated: temporal,goal,spatial,plot.")] = "temporal,goal,spatial,plot",
    per_video: Annotated[int, typer.Option(help="Questions per video, dealt round robin over --categories.")] = 4,
    clip_seconds: Annotated[float, typer.Option(help="Clip length for captioning, in seconds.")] = 10.0,
    caption_frames: Annotated[int, typer.Option(help="Frames sent to the captioner per clip.")] = 4,
    caption_image_size: Annotated[int, typer.Option(help="Longer side of each frame sent, in pixels (larger frames are scaled down).")] = 448,
    repairs: Annotated[int, typer.Option(help="Repair requests after an invalid question reply, before it is rejected.")] = 1,
    concurrency: Annotated[int, typer.Option(help="Requests (and video probes) in flight at once.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds per request attempt.")] = 60.0,
    retries: Annotated[int, typer.Option(help="Retries per request on 429, 5xx, timeouts and connection errors.")] = 4,
    backoff: Annotated[float, typer.Option(help="First retry wait in seconds (doubles per retry, with jitter).")] = 1.0,
    filter_model: Annotated[Path | None, typer.Option(help="Base model folder for the filter stage (rollout engine hf).")] = None,
    filter_samples: Annotated[int, typer.Option(help="Answers per question in the filter stage.")] = 10,
    filter_frames: Annotated[int, typer.Option(help="Frames per video in the filter stage.")] = 32,
    filter_min: Annotated[float, typer.Option(help="RL split: pass rate must be above this.")] = 0.0,
    filter_max: Annotated[float, typer.Option(help="RL split: pass rate must be below this.")] = 1.0,
    filter_max_tokens: Annotated[int, typer.Option(help="Response length cap in the filter stage.")] = 512,
    filter_temperature: Annotated[float, typer.Option(help="Sampling temperature in the filter stage.")] = 1.0,
    filter_batch_size: Annotated[int, typer.Option(help="Questions per generate call in the filter stage.")] = 4,
    device: Annotated[str, typer.Option(help="Device for local models (hf backends, filter): auto, cpu, cuda, cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="dtype for local models: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.")] = "auto",
    eval_fraction: Annotated[float, typer.Option(help="Share of questions held out for eval (whole videos).")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed for requests, the filter's sampling, the eval split and synthetic data.")] = 0,
    video_backend: Annotated[str, typer.Option(help="Decoder: auto (decord, then PyAV), decord or pyav.")] = "auto",
    synthetic_videos: Annotated[int, typer.Option(help="Synthetic source: number of videos.")] = 100,
    synthetic_frames: Annotated[int, typer.Option(help="Synthetic source: frames per video.")] = 256,
    synthetic_fps: Annotated[int, typer.Option(help="Synthetic source: frame rate.")] = 8,
    synthetic_size: Annotated[int, typer.Option(help="Synthetic source: frame side in pixels (multiple of 4).")] = 56,
    synthetic_objects: Annotated[
        int | None, typer.Option(help="Synthetic source: coloured objects per video (default: 3).")
    ] = None,
    synthetic_questions: Annotated[
        str,
        typer.Option(
            help="Synthetic source: question style: lookup (one fact about a named object), ordinal (about "
            "the first and last objects; what `longrl demo` uses) or multihop (two moments per question)."
        ),
    ] = "lookup",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:  # fmt: skip
    """Generate reasoning QA data from long videos: scan, segment, caption, questions, refine, filter, split.

    Every stage is resumable: rerun the same command after a crash or kill and it continues where it stopped.

    Failed items (bad videos, failed requests, invalid model output) go to OUT/rejected.jsonl with the reason, and the run goes on.

    Outputs: OUT/sft.jsonl, rl.jsonl, eval.jsonl (released LongVideo-Reason schema) and OUT/manifest.json.
    """
    from rich.console import Console

    from longrl.data.generate import (
        BackendSpec,
        GenerateConfig,
        parse_list,
        run_pipeline,
        summary_lines,
        summary_table,
    )

    def spec(kind: str | None, model: str | None, url: str | None) -> BackendSpec | None:
        return None if kind is None else BackendSpec(kind, model or "", url or base_url)

    cfg = GenerateConfig(
        out=out,
        source=source,
        videos=videos,
        video_root=video_root,
        stages=parse_list(stages),
        captioner=spec(captioner, captioner_model, captioner_base_url),
        reasoner=spec(reasoner, reasoner_model, reasoner_base_url),
        api_key_env=api_key_env,
        timeout_s=timeout,
        retries=retries,
        backoff_s=backoff,
        concurrency=concurrency,
        categories=parse_list(categories) or (),
        per_video=per_video,
        clip_seconds=clip_seconds,
        caption_frames=caption_frames,
        caption_image_size=caption_image_size,
        repairs=repairs,
        filter_model=filter_model,
        filter_samples=filter_samples,
        filter_frames=filter_frames,
        filter_min=filter_min,
        filter_max=filter_max,
        filter_max_tokens=filter_max_tokens,
        filter_temperature=filter_temperature,
        filter_batch_size=filter_batch_size,
        device=device,
        dtype=dtype,
        eval_fraction=eval_fraction,
        seed=seed,
        video_backend=video_backend,
        synthetic_videos=synthetic_videos,
        synthetic_frames=synthetic_frames,
        synthetic_fps=synthetic_fps,
        synthetic_size=synthetic_size,
        synthetic_objects=synthetic_objects,
        synthetic_questions=synthetic_questions,
    )
    console = Console(stderr=True)
    try:
        result = run_pipeline(cfg, console=console, show_progress=not quiet)
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to continue from {out}", file=sys.stderr)
        raise typer.Exit(130) from None
    Console().print(summary_table(result.stages))
    for line in summary_lines(result.stages):
        print(line)
    manifest = result.manifest
    splits = manifest.get("splits")
    if splits:
        rows = ", ".join(f"{name} {info['rows']}" for name, info in splits.items())
        print(f"wrote {out}/sft.jsonl, rl.jsonl, eval.jsonl ({rows}); manifest: {out}/manifest.json")
        print(f"train with --data {out}/<split>.jsonl --video-root {manifest['video_root']}")
    waiting = sum(entry.get("waiting_for_retry", 0) for entry in manifest.get("stages", {}).values())
    if waiting:
        print(f"{waiting} item(s) failed with backend errors; rerun the same command to retry them")
    if result.rejected_now:
        print(f"{result.rejected_now} item(s) rejected in this run; reasons in {out}/rejected.jsonl")


def register(app: typer.Typer) -> None:
    app.command("generate-data")(generate_data)
