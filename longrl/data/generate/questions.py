"""Stage 4, questions: per video, all timestamped clip captions -> the reasoner -> validated questions.

Each video gets `--per-video` question slots, dealt round robin over `--categories` (slot 0 the first
category, slot 1 the second, ...). One request per slot asks for one question of the slot's category as strict
JSON; the reply is checked (`validation.validate_question`: answer among the options, options distinct,
timestamps inside the video, non-empty reasoning that cites timestamps, the category asked for). An invalid
reply is sent back with a repair prompt naming the problem, up to `--repairs` times; then the slot is rejected
with the last problem as its reason. A backend that fails after all its retries rejects the slot with
`backend_error` (the next run tries it again). Nothing here stops the run.

A video waits (no request, no rejection) while one of its clips has no caption because the captioner failed
with a backend error: the next run captions it and then asks. A video with no caption at all is rejected
(`no_captions`).

Record: question_record(...) + {"duration_s", "attempts", "backend"}.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from longrl.data.generate.context import RETRY_REASONS, RunContext, StageStats, run_bounded
from longrl.data.generate.prompts import QUESTION_SYSTEM, question_prompt, repair_prompt
from longrl.data.generate.records import question_id, question_record
from longrl.data.generate.validation import InvalidOutput, QuestionDraft, validate_question


def request_seed(seed: int, rid: str, attempt: int) -> int:
    """A per-request seed, stable across runs (so a rerun asks exactly what the killed run would have)."""
    digest = hashlib.sha256(f"{seed}\x00{rid}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class Slot:
    """One question to ask about one video."""

    rid: str
    video: dict
    category: str
    number: int  # 1-based among the video's slots of this category
    count: int  # slots of this category for the video
    captions: tuple[tuple[float, float, str], ...]


def slots_of(video: dict, categories: tuple[str, ...], per_video: int) -> list[tuple[str, str, int, int]]:
    """(question id, category, number, count) of each slot of `video`."""
    out = []
    for slot in range(per_video):
        k = slot % len(categories)
        count = len(range(k, per_video, len(categories)))
        out.append(
            (question_id(video["id"], slot, categories[k]), categories[k], slot // len(categories) + 1, count)
        )
    return out


def ask(backend, slot: Slot, cfg) -> tuple[QuestionDraft | None, int, str, str]:
    """Ask for one question, repairing invalid replies -> (draft or None, requests made, reason, detail)."""
    from longrl.llm import BackendRequestError, assistant_message, system_message, user_message

    duration = slot.video["duration_s"]
    messages = [
        system_message(QUESTION_SYSTEM),
        user_message(question_prompt(slot.category, duration, slot.captions, slot.number, slot.count)),
    ]
    problem: InvalidOutput | None = None
    for attempt in range(cfg.repairs + 1):
        try:
            reply = backend.chat(
                messages,
                max_tokens=cfg.question_max_tokens,
                temperature=cfg.question_temperature,
                seed=request_seed(cfg.seed, slot.rid, attempt),
            )
        except BackendRequestError as err:
            return None, attempt + 1, "backend_error", str(err)
        try:
            return validate_question(reply, category=slot.category, duration_s=duration), attempt + 1, "", ""
        except InvalidOutput as bad:
            problem = bad
            messages = [*messages, assistant_message(reply), user_message(repair_prompt(bad.detail))]
    assert problem is not None
    return None, cfg.repairs + 1, problem.reason, problem.detail


def run_questions(ctx: RunContext, stats: StageStats) -> None:
    """Ask every question slot that has no record (nor a final rejection) yet."""
    cfg = ctx.cfg
    records = ctx.log("questions")
    captions = ctx.log("caption")
    clips_by_video: dict[str, list[dict]] = {}
    for clip in ctx.log("segment").values():
        clips_by_video.setdefault(clip["video_id"], []).append(clip)

    pending: list[Slot] = []
    waiting = 0
    for video in ctx.log("scan").values():
        slots = slots_of(video, cfg.categories, cfg.per_video)
        stats.total += len(slots)
        todo = [s for s in slots if not ctx.is_done("questions", s[0])]
        stats.skipped += len(slots) - len(todo)
        if not todo:
            continue
        clips = sorted(clips_by_video.get(video["id"], []), key=lambda c: c["start_s"])
        have = [captions.get(c["id"]) for c in clips]
        retry = [
            c for c, cap in zip(clips, have, strict=True)
            if cap is None and (ctx.rejection("caption", c["id"]) or {}).get("reason") in RETRY_REASONS
        ]  # fmt: skip
        if retry:
            waiting += len(todo)
            continue
        timeline = tuple((c["start_s"], c["end_s"], c["caption"]) for c in have if c is not None)
        for rid, category, number, count in todo:
            if not timeline:
                ctx.reject(stats, rid, "no_captions", f"no clip of video {video['id']} has a caption")
                continue
            pending.append(Slot(rid, video, category, number, count, timeline))
    if waiting:
        stats.notes.append(
            f"{waiting} question(s) wait for captions that failed with backend errors; rerun to continue"
        )
    if not pending:
        return
    backend = ctx.backend("reasoner")

    with ctx.task("questions", len(pending)) as advance:

        def work(slot: Slot) -> tuple[QuestionDraft | None, int, str, str]:
            return ask(backend, slot, cfg)

        def on_done(slot: Slot, result: tuple[QuestionDraft | None, int, str, str]) -> None:
            draft, attempts, reason, detail = result
            if draft is None:
                ctx.reject(stats, slot.rid, reason, detail)
            else:
                records.append(
                    question_record(
                        rid=slot.rid,
                        video_id=slot.video["id"],
                        video=slot.video["path"],
                        category=draft.category,
                        question=draft.question,
                        options=draft.options,
                        answer=draft.answer,
                        reasoning=draft.reasoning,
                        duration_s=slot.video["duration_s"],
                        attempts=attempts,
                        backend=backend.name,
                    )
                )
                stats.done += 1
                if attempts > 1:
                    stats.counts["repaired"] = stats.counts.get("repaired", 0) + 1
            advance(1)

        run_bounded(pending, work, on_done, cfg.concurrency)
