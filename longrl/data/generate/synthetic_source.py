"""`--source synthetic`: the procedural generator (`longrl.data.synthetic`) replaces scan..refine.

It writes its videos under `OUT/videos/` and its rows (with reasoning) to `OUT/synthetic.jsonl`; this stage
turns those rows into question records (`synthetic_questions.jsonl`) that filter and split read, with video
paths relative to the output folder. The generator is resumable itself (existing videos are reused), and
the same knobs always give the same rows, so rerunning the stage costs only what is missing.
"""

from __future__ import annotations

from longrl.data.generate.context import RunContext, StageStats
from longrl.data.generate.records import question_record


def run_synthetic(ctx: RunContext, stats: StageStats) -> None:
    """Generate (or reuse) the synthetic videos and questions and record the questions."""
    from longrl.data.dataset import load_examples
    from longrl.data.synthetic import generate_synthetic

    cfg = ctx.cfg
    records = ctx.log("synthetic")
    with ctx.task("synthetic", cfg.synthetic_videos) as advance:
        done_videos = 0

        def progress(done: int, total: int) -> None:
            nonlocal done_videos
            advance(done - done_videos)
            done_videos = done

        result = generate_synthetic(
            cfg.out,
            num_videos=cfg.synthetic_videos,
            questions_per_video=cfg.per_video,
            categories=cfg.categories,
            seed=cfg.seed,
            num_frames=cfg.synthetic_frames,
            fps=cfg.synthetic_fps,
            size=cfg.synthetic_size,
            objects_per_video=cfg.synthetic_objects,
            questions=cfg.synthetic_questions,
            progress=progress,
        )
    examples, _ = load_examples(result.rows_path, cfg.out, on_bad_row="fail")
    duration_s = cfg.synthetic_frames / cfg.synthetic_fps
    stats.total = len(examples)
    stats.counts["videos_encoded"] = result.encoded
    stats.counts["videos_reused"] = result.reused
    for ex in examples:
        if ex.id in records:
            stats.skipped += 1
            continue
        records.append(
            question_record(
                rid=ex.id,
                video_id=ex.video_rel.rsplit("/", 1)[-1].rsplit(".", 1)[0],
                video=ex.video_rel,
                category=ex.category,
                question=ex.question,
                options=ex.options,
                answer=ex.answer,
                reasoning=ex.reasoning,
                duration_s=duration_s,
            )
        )
        stats.done += 1
