"""manifest.json (counts per stage, category and rejection reason) and the end-of-run summary table.

The manifest is rebuilt from the record files after every stage (not from this run's counters), so it is
right after any number of killed and resumed runs. It holds no secret: backends are named "kind:model", the
API key's variable is never written.
"""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

from rich.table import Table

from longrl.data.generate.context import RETRY_REASONS, RunContext, StageStats
from longrl.data.generate.filter import in_rl_band
from longrl.data.generate.records import STAGE_FILES

GENERATOR = "longrl generate-data"
MANIFEST_VERSION = 1


def new_manifest(source: str, video_root: str) -> dict[str, Any]:
    return {
        "generator": GENERATOR,
        "version": MANIFEST_VERSION,
        "source": source,
        "video_root": video_root,
        "stages": {},
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def refresh_manifest(manifest: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Recount everything from the record files into `manifest` (in place) and return it."""
    cfg = ctx.cfg
    stages = manifest.setdefault("stages", {})
    for name in cfg.all_stages:
        entry = stages.get(name)
        if entry is None:
            continue
        if name in STAGE_FILES and (cfg.out / STAGE_FILES[name]).exists():
            entry["records"] = len(ctx.log(name))
        rejected = ctx.rejections(name)
        entry["rejected"] = len(rejected)
        entry["waiting_for_retry"] = sum(1 for r in rejected if r["reason"] in RETRY_REASONS)
    manifest["rejections"] = {
        name: dict(sorted(Counter(r["reason"] for r in ctx.rejections(name)).items()))
        for name in cfg.all_stages
        if ctx.rejections(name)
    }
    questions_file = cfg.out / STAGE_FILES[cfg.question_stage]
    if questions_file.exists():
        questions = ctx.log(cfg.question_stage).values()
        manifest["categories"] = dict(sorted(Counter(q["category"] for q in questions).items()))
        if cfg.source == "videos":
            kept = Counter(
                q["refine_problem"].split(":", 1)[0] for q in questions if not q.get("refined", True)
            )
            manifest["refine"] = {
                "refined": sum(1 for q in questions if q.get("refined")),
                "kept_original": sum(kept.values()),
                "kept_original_reasons": dict(sorted(kept.items())),
            }
    if (cfg.out / STAGE_FILES["filter"]).exists():
        rates = [r["pass_rate"] for r in ctx.log("filter").values()]
        manifest["filter"] = {
            "questions": len(rates),
            "samples_per_question": cfg.filter_samples,
            "bounds": [cfg.filter_min, cfg.filter_max],
            "in_rl_band": sum(1 for p in rates if in_rl_band(p, cfg.filter_min, cfg.filter_max)),
            "all_correct": sum(1 for p in rates if p == 1.0),
            "all_wrong": sum(1 for p in rates if p == 0.0),
            "mean_pass_rate": round(sum(rates) / len(rates), 4) if rates else None,
        }
    backends = manifest.setdefault("backends", {})
    backends.update(ctx.backend_names())
    if cfg.filter_model is not None:
        backends["filter_model"] = str(cfg.filter_model)
    manifest["updated_at"] = _now()
    return manifest


def mark_stage(manifest: dict[str, Any], stage: str, *, complete: bool, settings: dict | None = None) -> None:
    entry = manifest.setdefault("stages", {}).setdefault(stage, {})
    entry["complete"] = complete
    if settings is not None:
        entry["settings"] = settings
    if complete:
        entry["finished_at"] = _now()


def summary_table(stats: list[StageStats]) -> Table:
    """One row per stage run: items, already done (earlier runs), done now, rejected now, seconds."""
    table = Table(title="generate-data", title_justify="left")
    for column in ("stage", "items", "already done", "done now", "rejected now", "seconds"):
        table.add_column(column, justify="left" if column == "stage" else "right", no_wrap=True)
    for s in stats:
        table.add_row(s.name, str(s.total), str(s.skipped), str(s.done), str(s.rejected), f"{s.seconds:.1f}")
    return table


def summary_lines(stats: list[StageStats]) -> list[str]:
    """What the table cannot say: rejection reasons, other outcomes and notes, one line per stage item."""
    lines = []
    for s in stats:
        if s.reasons:
            lines.append(f"{s.name}: rejected " + ", ".join(f"{r} {n}" for r, n in sorted(s.reasons.items())))
        if s.counts:
            lines.append(f"{s.name}: " + ", ".join(f"{k} {n}" for k, n in sorted(s.counts.items())))
        lines += [f"{s.name}: {note}" for note in s.notes]
    return lines
