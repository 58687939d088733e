"""Stage 7, split: the finished questions -> sft.jsonl, rl.jsonl and eval.jsonl in the released schema.

eval: whole videos are held out (no video is in eval and in training), drawn with `--seed` until about
`--eval-fraction` of the questions are in eval (at least one video when the fraction is > 0 and there are
two videos or more). Of the rest, a question whose filter pass rate p has `--filter-min` < p < `--filter-max`
goes to rl (the base model sometimes gets it right: a GRPO signal), every other one to sft (its reasoning
is still good chain-of-thought data). Without filter results everything that is not eval goes to sft.
Questions the filter rejected (video unreadable) go nowhere.

Rows are `longrl.data.schema.example_to_released_row` rows (`problem_id`, `problem` with the lettered
options, `data_type`, `problem_type`, `reasoning`, `videos`, `answer` as "<answer>B</answer>"), written with
`write_released_jsonl` (atomically), so `load_examples(path, video_root)` and `longrl train` read them as
they are. Each file is rewritten whole on every run.
"""

from __future__ import annotations

import random

from longrl.data.dataset import write_released_jsonl
from longrl.data.generate.context import RunContext, StageStats
from longrl.data.generate.filter import in_rl_band
from longrl.data.generate.records import SPLIT_FILES, example_of


def eval_videos(questions: list[dict], fraction: float, seed: int) -> set[str]:
    """The videos held out for eval: seeded shuffle, taken until >= fraction of the questions are covered."""
    per_video: dict[str, int] = {}
    for q in questions:
        per_video[q["video"]] = per_video.get(q["video"], 0) + 1
    videos = sorted(per_video)
    if fraction <= 0 or len(videos) < 2:
        return set()
    random.Random(seed).shuffle(videos)
    target = fraction * len(questions)
    chosen: set[str] = set()
    covered = 0
    for video in videos[:-1]:  # never all videos: training keeps at least one
        if covered >= target and chosen:
            break
        chosen.add(video)
        covered += per_video[video]
    return chosen


def assign_splits(questions: list[dict], pass_rates: dict[str, float] | None, cfg) -> dict[str, list[dict]]:
    """{"sft": [...], "rl": [...], "eval": [...]} in question order (see the module docstring)."""
    held_out = eval_videos(questions, cfg.eval_fraction, cfg.seed)
    splits: dict[str, list[dict]] = {name: [] for name in SPLIT_FILES}
    for q in questions:
        if q["video"] in held_out:
            splits["eval"].append(q)
        elif pass_rates is not None and in_rl_band(pass_rates[q["id"]], cfg.filter_min, cfg.filter_max):
            splits["rl"].append(q)
        else:
            splits["sft"].append(q)
    return splits


def run_split(ctx: RunContext, stats: StageStats, filter_complete: bool) -> dict[str, dict]:
    """Write the three split files; returns {split: {"rows", "per_category"}} for the manifest."""
    cfg = ctx.cfg
    questions = sorted(ctx.log(cfg.question_stage).values(), key=lambda q: q["id"])
    pass_rates = None
    if filter_complete:
        pass_rates = {r["id"]: r["pass_rate"] for r in ctx.log("filter").values()}
        dropped = [q for q in questions if q["id"] not in pass_rates]
        questions = [q for q in questions if q["id"] in pass_rates]
        if dropped:
            stats.notes.append(f"{len(dropped)} question(s) the filter rejected are left out of every split")
    else:
        stats.notes.append("no filter results (run the filter stage with --filter-model): rl.jsonl is empty")
    stats.total = len(questions)
    splits = assign_splits(questions, pass_rates, cfg)
    summary: dict[str, dict] = {}
    with ctx.task("split", len(questions)) as advance:
        for name, rows in splits.items():
            write_released_jsonl((example_of(q, ctx.video_root) for q in rows), cfg.out / SPLIT_FILES[name])
            per_category: dict[str, int] = {c: 0 for c in sorted({q["category"] for q in questions})}
            for q in rows:
                per_category[q["category"]] += 1
            summary[name] = {"rows": len(rows), "file": SPLIT_FILES[name], "per_category": per_category}
            advance(len(rows))
    stats.done = len(questions)
    return summary
