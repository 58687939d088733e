"""Everything `longrl generate-data` is told, checked once (ConfigError naming the flag) before any work.

Stages, in order: scan, segment, caption, questions, refine, filter, split (`--source videos`), or
synthetic, filter, split (`--source synthetic`: the procedural generator writes videos and questions with
reasoning, replacing scan..refine). Without `--stages`, all of the source's stages run, filter only when a
`--filter-model` is given.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longrl.data.generate.prompts import CATEGORIES
from longrl.data.synthetic.timeline import QUESTION_STYLES
from longrl.errors import ConfigError

VIDEO_STAGES = ("scan", "segment", "caption", "questions", "refine", "filter", "split")
SYNTHETIC_STAGES = ("synthetic", "filter", "split")
SOURCES = ("videos", "synthetic")
BACKEND_KINDS = ("openai", "hf", "vllm")

# The stage whose complete output a stage reads.
STAGE_INPUT = {
    "segment": "scan",
    "caption": "segment",
    "questions": "caption",
    "refine": "questions",
}


@dataclass(frozen=True)
class BackendSpec:
    """Which chat backend a stage talks to: kind (openai | hf | vllm), model (served name or folder), URL."""

    kind: str
    model: str
    base_url: str | None = None


@dataclass(frozen=True)
class GenerateConfig:
    """All knobs of one generate-data run (defaults = the CLI's). Call `checked()` before use."""

    out: Path
    source: str = "videos"
    videos: Path | None = None
    video_root: Path | None = None
    stages: tuple[str, ...] | None = None
    captioner: BackendSpec | None = None
    reasoner: BackendSpec | None = None
    api_key_env: str | None = None
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 1.0
    concurrency: int = 8
    categories: tuple[str, ...] = tuple(CATEGORIES)
    per_video: int = 4
    clip_seconds: float = 10.0
    caption_frames: int = 4
    caption_image_size: int = 448
    caption_max_tokens: int = 256
    question_max_tokens: int = 1024
    question_temperature: float = 0.7
    refine_max_tokens: int = 512
    repairs: int = 1
    filter_model: Path | None = None
    filter_samples: int = 10
    filter_frames: int = 32
    filter_min: float = 0.0
    filter_max: float = 1.0
    filter_max_tokens: int = 512
    filter_temperature: float = 1.0
    filter_batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    eval_fraction: float = 0.1
    seed: int = 0
    video_backend: str = "auto"
    synthetic_videos: int = 100
    synthetic_frames: int = 256
    synthetic_fps: int = 8
    synthetic_size: int = 56
    synthetic_objects: int | None = None  # None: the task's default for its question style (3 for lookup)
    synthetic_questions: str = "lookup"  # the question style (longrl.data.synthetic.QUESTION_STYLES)

    @property
    def all_stages(self) -> tuple[str, ...]:
        return VIDEO_STAGES if self.source == "videos" else SYNTHETIC_STAGES

    @property
    def question_stage(self) -> str:
        """The stage whose records are the finished questions (what filter and split read)."""
        return "refine" if self.source == "videos" else "synthetic"

    def stages_to_run(self) -> tuple[str, ...]:
        """The stages this run executes, in pipeline order."""
        if self.stages is None:
            return tuple(s for s in self.all_stages if s != "filter" or self.filter_model is not None)
        return tuple(s for s in self.all_stages if s in self.stages)

    def input_stage(self, stage: str) -> str | None:
        """The stage whose finished output `stage` reads (None for the first stage)."""
        if stage in ("filter", "split"):
            return self.question_stage
        return STAGE_INPUT.get(stage)

    def checked(self) -> GenerateConfig:
        """Raise ConfigError (one line naming the flag) for any bad value; returns self."""
        _check(self)
        return self

    def stage_settings(self, stage: str) -> dict[str, Any]:
        """The settings a stage's existing records depend on (a rerun on the same --out must keep them)."""
        settings: dict[str, dict[str, Any]] = {
            "segment": {"clip_seconds": self.clip_seconds},
            "caption": {"caption_frames": self.caption_frames},
            "questions": {"categories": list(self.categories), "per_video": self.per_video},
            # Every knob a question's k samples depend on (its seed is derived from --seed and its id).
            "filter": {
                "filter_model": None if self.filter_model is None else str(Path(self.filter_model).resolve()),
                "filter_samples": self.filter_samples,
                "filter_frames": self.filter_frames,
                "filter_temperature": self.filter_temperature,
                "filter_max_tokens": self.filter_max_tokens,
                "seed": self.seed,
            },
            "synthetic": {
                "synthetic_videos": self.synthetic_videos,
                "per_video": self.per_video,
                "categories": list(self.categories),
                "seed": self.seed,
                "synthetic_frames": self.synthetic_frames,
                "synthetic_fps": self.synthetic_fps,
                "synthetic_size": self.synthetic_size,
                "synthetic_objects": self.synthetic_objects,
                "synthetic_questions": self.synthetic_questions,
            },
        }
        return settings.get(stage, {})


# Flag name of each setting, for error messages.
FLAG = {
    "clip_seconds": "--clip-seconds",
    "caption_frames": "--caption-frames",
    "categories": "--categories",
    "per_video": "--per-video",
    "filter_samples": "--filter-samples",
    "filter_frames": "--filter-frames",
    "filter_model": "--filter-model",
    "filter_temperature": "--filter-temperature",
    "filter_max_tokens": "--filter-max-tokens",
    "synthetic_videos": "--synthetic-videos",
    "seed": "--seed",
    "synthetic_frames": "--synthetic-frames",
    "synthetic_fps": "--synthetic-fps",
    "synthetic_size": "--synthetic-size",
    "synthetic_objects": "--synthetic-objects",
    "synthetic_questions": "--synthetic-questions",
    "video_root": "--videos / --video-root",
}


def parse_list(value: str | None) -> tuple[str, ...] | None:
    """ "a, b,c" -> ("a", "b", "c"); None stays None."""
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _positive(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")


def _check_backend(flag: str, spec: BackendSpec | None, needed_by: str) -> None:
    if spec is None or not spec.kind:
        raise ConfigError(f"the {needed_by} stage needs {flag} (one of {', '.join(BACKEND_KINDS)})")
    if spec.kind not in BACKEND_KINDS:
        raise ConfigError(f"{flag} must be one of {', '.join(BACKEND_KINDS)}, got {spec.kind!r}")
    if not spec.model:
        what = "a served model name" if spec.kind == "openai" else "a model folder"
        raise ConfigError(f"{flag} {spec.kind} needs {flag}-model ({what})")
    if spec.kind == "openai" and not spec.base_url:
        raise ConfigError(
            f"{flag} openai needs {flag}-base-url (or --base-url), e.g. http://localhost:8000/v1"
        )


def _check(cfg: GenerateConfig) -> None:
    if cfg.source not in SOURCES:
        raise ConfigError(f"--source must be one of {', '.join(SOURCES)}, got {cfg.source!r}")
    if cfg.synthetic_questions not in QUESTION_STYLES:
        raise ConfigError(
            f"--synthetic-questions must be one of {', '.join(QUESTION_STYLES)}, got {cfg.synthetic_questions!r}"
        )
    if cfg.stages is not None:
        if not cfg.stages:
            raise ConfigError(f"--stages is empty; choose from {', '.join(cfg.all_stages)}")
        unknown = [s for s in cfg.stages if s not in cfg.all_stages]
        if unknown:
            raise ConfigError(
                f"--stages: {', '.join(unknown)} is not a stage of --source {cfg.source}; choose from "
                f"{', '.join(cfg.all_stages)}"
            )
    if not cfg.categories:
        raise ConfigError(f"--categories is empty; choose from {', '.join(CATEGORIES)}")
    unknown = [c for c in cfg.categories if c not in CATEGORIES]
    if unknown:
        raise ConfigError(f"--categories: unknown {', '.join(unknown)}; choose from {', '.join(CATEGORIES)}")
    if len(set(cfg.categories)) != len(cfg.categories):
        raise ConfigError(f"--categories repeats a category: {','.join(cfg.categories)}")
    for name, value in (
        ("--per-video", cfg.per_video),
        ("--concurrency", cfg.concurrency),
        ("--caption-frames", cfg.caption_frames),
        ("--caption-image-size", cfg.caption_image_size),
        ("--filter-samples", cfg.filter_samples),
        ("--filter-frames", cfg.filter_frames),
        ("--filter-batch-size", cfg.filter_batch_size),
        ("--synthetic-videos", cfg.synthetic_videos),
    ):
        _positive_int(name, value)
    _positive_int("--retries", cfg.retries, 0)
    _positive_int("--repairs", cfg.repairs, 0)
    _positive_int("--seed", cfg.seed, 0)
    _positive("--clip-seconds", cfg.clip_seconds)
    _positive("--timeout", cfg.timeout_s)
    if not (isinstance(cfg.backoff_s, (int, float)) and math.isfinite(cfg.backoff_s) and cfg.backoff_s >= 0):
        raise ConfigError(f"--backoff must be a number >= 0, got {cfg.backoff_s!r}")
    if not (0.0 <= cfg.filter_min < cfg.filter_max <= 1.0):
        raise ConfigError(
            f"need 0 <= --filter-min < --filter-max <= 1, got {cfg.filter_min} and {cfg.filter_max}"
        )
    if not (0.0 <= cfg.eval_fraction < 1.0):
        raise ConfigError(f"--eval-fraction must be in [0, 1), got {cfg.eval_fraction}")
    stages = cfg.stages_to_run()
    if cfg.source == "videos" and "scan" in stages:
        if cfg.videos is None:
            raise ConfigError("the scan stage needs --videos DIR (a folder of videos or a file listing them)")
        if not cfg.videos.exists():
            raise ConfigError(f"--videos {cfg.videos}: no such folder or file")
    if cfg.video_root is not None and not cfg.video_root.is_dir():
        raise ConfigError(f"--video-root {cfg.video_root}: not a folder")
    if "caption" in stages:
        _check_backend("--captioner", cfg.captioner, "caption")
    if "questions" in stages or "refine" in stages:
        _check_backend("--reasoner", cfg.reasoner, "questions" if "questions" in stages else "refine")
    uses_openai = any(
        spec is not None and spec.kind == "openai" and role in stages
        for spec, role in ((cfg.captioner, "caption"), (cfg.reasoner, "questions"), (cfg.reasoner, "refine"))
    )
    if uses_openai and cfg.api_key_env and not os.environ.get(cfg.api_key_env, "").strip():
        raise ConfigError(
            f"environment variable {cfg.api_key_env} (named by --api-key-env) is not set or empty; "
            f"export {cfg.api_key_env}=<your key>"
        )
    if "filter" in stages:
        if cfg.filter_model is None:
            raise ConfigError("the filter stage needs --filter-model DIR (the base model to answer with)")
        if not cfg.filter_model.is_dir():
            raise ConfigError(f"--filter-model {cfg.filter_model}: not a folder")
