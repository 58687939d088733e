"""Run the generate-data stages in order on one output folder, resumably, and account for everything.

    result = run_pipeline(GenerateConfig(out=Path("data/"), videos=Path("videos/"), ...))
    result.manifest["splits"]["rl"]["rows"]

Output folder (everything the pipeline writes; nothing else in it is touched):
    manifest.json           counts per stage, category and rejection reason; stage completion; settings
    rejected.jsonl          {"stage", "id", "reason", "detail"} per rejected item
    videos.jsonl clips.jsonl captions.jsonl questions.jsonl refined.jsonl filtered.jsonl    stage records
    synthetic.jsonl synthetic.meta.json videos/ synthetic_questions.jsonl                 (--source synthetic)
    sft.jsonl rl.jsonl eval.jsonl      the data, released LongVideo-Reason schema
    .lock                   held while a run writes the folder

Resuming: every stage skips the ids it has records for (or final rejections), so running the same command
after a kill continues where it stopped. A stage reads the finished output of the stage before it; running a
stage marks it and every later stage unfinished until it ends (new upstream records must flow down).
Settings a stage's records depend on (`GenerateConfig.stage_settings`) must stay the same across runs.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from longrl.data.generate.config import FLAG, GenerateConfig
from longrl.data.generate.context import RunContext, StageStats, make_progress
from longrl.data.generate.records import MANIFEST_FILE, STAGE_FILES
from longrl.data.generate.report import GENERATOR, mark_stage, new_manifest, refresh_manifest
from longrl.data.generate.scan import default_video_root
from longrl.data.generate.split import run_split
from longrl.data.generate.store import OutputLock, read_json, write_json_atomic
from longrl.errors import ConfigError

# Stage -> "module:function", imported when the stage runs (video decoding pulls in torch, which a run that
# stops at a flag mistake should not wait for).
RUNNERS = {
    "scan": "scan:run_scan",
    "segment": "segment:run_segment",
    "caption": "caption:run_caption",
    "questions": "questions:run_questions",
    "refine": "refine:run_refine",
    "synthetic": "synthetic_source:run_synthetic",
    "filter": "filter:run_filter",
}


def _runner(stage: str) -> Callable[[RunContext, StageStats], None]:
    module, function = RUNNERS[stage].split(":")
    return getattr(importlib.import_module(f"longrl.data.generate.{module}"), function)


@dataclass
class PipelineResult:
    """What a run did (per stage) and the manifest as written."""

    out: Path
    stages: list[StageStats]
    manifest: dict[str, Any]

    @property
    def rejected_now(self) -> int:
        return sum(s.rejected for s in self.stages)


def _open_manifest(out: Path) -> dict[str, Any] | None:
    """The folder's manifest, None for a new or empty folder; ConfigError for a folder that is not ours."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    path = out / MANIFEST_FILE
    if path.is_file():
        manifest = read_json(path)
        if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
            raise ConfigError(f"{path} was not written by generate-data; choose another --out folder")
        return manifest
    if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):
        raise ConfigError(
            f"--out {out} holds files but no {MANIFEST_FILE}; it is not a generate-data output folder, so "
            "nothing in it is touched: choose a new or empty folder"
        )
    return None


def _video_root(cfg: GenerateConfig, manifest: dict[str, Any] | None) -> Path:
    if cfg.source == "synthetic":
        root = cfg.out.resolve()
    elif cfg.video_root is not None:
        root = cfg.video_root.resolve()
    elif cfg.videos is not None:
        root = default_video_root(cfg.videos)
    elif manifest is not None and manifest.get("video_root"):
        root = Path(manifest["video_root"])
    else:
        raise ConfigError("give --videos DIR (the folder the videos are in)")
    if manifest is not None and manifest.get("video_root") and Path(manifest["video_root"]) != root:
        raise ConfigError(
            f"{cfg.out} was made with the video root {manifest['video_root']} (now {root}); the records' "
            "video paths are relative to it: pass the same --videos / --video-root, or use a new --out"
        )
    return root


def _check_settings(cfg: GenerateConfig, manifest: dict[str, Any], stage: str) -> dict[str, Any]:
    """The stage's settings; ConfigError when its existing records were made with different ones."""
    settings = cfg.stage_settings(stage)
    before = manifest.get("stages", {}).get(stage, {}).get("settings")
    has_records = (
        stage in STAGE_FILES
        and (cfg.out / STAGE_FILES[stage]).exists()
        and ((cfg.out / STAGE_FILES[stage]).stat().st_size > 0)
    )
    if before and has_records:
        for key, value in settings.items():
            made_with = before.get(key, SETTINGS_BEFORE_THEY_WERE_RECORDED.get(key, value))
            if made_with != value:
                raise ConfigError(
                    f"{cfg.out} was made with {FLAG.get(key, key)} {_show(made_with)} (now {_show(value)}); "
                    "use the same value to continue it, or a new --out"
                )
    return settings


# Settings added to the manifest after some folders were written: what those folders were made with.
SETTINGS_BEFORE_THEY_WERE_RECORDED: dict[str, Any] = {"synthetic_questions": "lookup"}


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _check_plan(cfg: GenerateConfig, manifest: dict[str, Any], stages: tuple[str, ...]) -> None:
    """Before any work: every stage's input is finished (or runs first in this run), and settings match."""
    done = {name for name, entry in manifest.get("stages", {}).items() if entry.get("complete")}
    for i, stage in enumerate(stages):
        needed = cfg.input_stage(stage)
        if needed is not None and needed not in done and needed not in stages[:i]:
            raise ConfigError(
                f"the {stage} stage reads the output of the {needed} stage, which has not finished in "
                f"{cfg.out}; run --stages {needed},{stage} (or without --stages)"
            )
        _check_settings(cfg, manifest, stage)
    filter_entry = manifest.get("stages", {}).get("filter")
    if "split" in stages and "filter" not in stages and filter_entry and not filter_entry.get("complete"):
        raise ConfigError("the filter stage has not finished; run --stages filter,split to finish it first")


def run_pipeline(
    cfg: GenerateConfig, *, console: Console | None = None, show_progress: bool = True
) -> PipelineResult:
    """Run `cfg.stages_to_run()` on `cfg.out`; returns what each stage did and the final manifest.

    Raises ConfigError (and the other LongRLErrors) for mistakes found before or between stages; item-level
    failures (a bad video, a failed request, an invalid reply) are rejections, never exceptions.
    """
    cfg = cfg.checked()
    manifest = _open_manifest(cfg.out)
    video_root = _video_root(cfg, manifest)
    if manifest is not None and manifest.get("source") != cfg.source:
        raise ConfigError(
            f"{cfg.out} holds a --source {manifest.get('source')} run; use the same --source or a new --out"
        )
    stages = cfg.stages_to_run()
    _check_plan(cfg, manifest or {}, stages)
    cfg.out.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    results: list[StageStats] = []
    with OutputLock(cfg.out):
        manifest = manifest or new_manifest(cfg.source, str(video_root))
        manifest_path = cfg.out / MANIFEST_FILE
        write_json_atomic(manifest_path, manifest)  # marks the folder as ours before anything else is written
        progress = make_progress(console) if show_progress else None
        ctx = RunContext(cfg, video_root, progress)
        try:
            if progress is not None:
                progress.start()
            for stage in stages:
                # Until this stage ends, the stages after it may miss its new records: mark them unfinished
                # (a kill now must not leave them looking complete); restored if the stage changed nothing.
                later = cfg.all_stages[cfg.all_stages.index(stage) + 1 :]
                before = {
                    name: dict(manifest["stages"][name]) for name in later if name in manifest["stages"]
                }
                for name in before:
                    mark_stage(manifest, name, complete=False)
                mark_stage(manifest, stage, complete=False, settings=cfg.stage_settings(stage))
                write_json_atomic(manifest_path, manifest)
                stats = StageStats(stage)
                started = time.perf_counter()
                if stage == "split":
                    filter_entry = manifest["stages"].get("filter")
                    if filter_entry is not None and not filter_entry.get("complete"):
                        raise ConfigError(
                            "the filter stage has not answered every question (new questions since it ran); "
                            "rerun with --filter-model (or --stages filter,split) so the RL split is right"
                        )
                    manifest["splits"] = run_split(ctx, stats, filter_complete=filter_entry is not None)
                else:
                    _runner(stage)(ctx, stats)
                    ctx.finish_stage(stage)
                stats.seconds = time.perf_counter() - started
                results.append(stats)
                mark_stage(manifest, stage, complete=True)
                if stats.done == 0 and stats.rejected == 0:
                    manifest["stages"].update(before)
                refresh_manifest(manifest, ctx)
                write_json_atomic(manifest_path, manifest)
        finally:
            if progress is not None:
                progress.stop()
            ctx.close()
    return PipelineResult(cfg.out, results, manifest)
