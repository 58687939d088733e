"""Stage 6, filter: the base model answers every question k times; its pass rate decides the RL split.

The model (`--filter-model`, loaded through `longrl.models.load_model`) answers with the "hf" rollout engine
through `longrl.rollout.answering.answer_examples`, the same path as evaluation: `--filter-frames` frames per
video (each video encoded once, cached), `--filter-samples` responses per question at
`--filter-temperature`. Each question is sampled in its own generate call with its own seed, derived
from `--seed` and its id (`question_seed`): the hf engine draws a batch's samples from one generator, so a
shared batch would make a question's samples depend on which questions share its batch, and a resumed run
(which batches only the questions left) would sample differently. The video is still encoded once per video
(cached), and the question's k samples still decode together. Each response is scored with `longrl.rl.rewards.accuracy_reward`, the training
reward's answer parser. Records are written per question as answers arrive, so a killed run loses at most
one batch.

Record: {"id", "pass_rate", "scores" (0/1 per sample), "answers" (the letter each sample names),
"samples", "model"}. A question whose video cannot be decoded is rejected (`video_unreadable`). Split sends
0 < pass rate < 1 (`--filter-min`, `--filter-max`, both exclusive) to RL: questions the model always or never
gets right give GRPO no signal.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from longrl.data.generate.context import RunContext, StageStats, resolved_dtype
from longrl.data.generate.records import example_of

if TYPE_CHECKING:
    from longrl.data.schema import Example
    from longrl.models.base import ModelAdapter
    from longrl.rollout.answering import Answered
    from longrl.rollout.base import RolloutEngine, SamplingParams
    from longrl.rollout.prompts import VideoSource


def in_rl_band(pass_rate: float, low: float, high: float) -> bool:
    """Whether a question with this pass rate goes to the RL split (low < rate < high)."""
    return low < pass_rate < high


def score_responses(texts: list[str], answer: str, options: list[str]) -> dict:
    """Score k responses to one question with the training reward's parser.

    Returns {"pass_rate": mean score, "scores": [0/1 per response], "answers": [the option letter each
    response's <answer> names, None when it names none]}.
    """
    from longrl.rl.answer_parsing import extract_answer, parse_choice
    from longrl.rl.rewards import accuracy_reward

    scores = [int(accuracy_reward(text, answer, options)) for text in texts]
    return {
        "pass_rate": sum(scores) / len(scores) if scores else 0.0,
        "scores": scores,
        "answers": [parse_choice(extract_answer(text), options) for text in texts],
    }


def question_seed(seed: int, question_id: str) -> int:
    """The sampling seed of one question: a function of `--seed` and its id only (never of batching)."""
    return zlib.crc32(f"{seed}:{question_id}".encode())


def answer_each(
    adapter: ModelAdapter,
    tokenizer,
    engine: RolloutEngine,
    examples: Sequence[Example],
    source: VideoSource,
    params: SamplingParams,
    seed: int,
) -> Iterator[Answered]:
    """`answer_examples`, one question per generate call, each with `question_seed(seed, id)`: a
    question's samples are the same whichever questions are answered with it (or before it)."""
    from longrl.rollout.answering import answer_examples

    for example in examples:
        own = dataclasses.replace(params, seed=question_seed(seed, example.id))
        yield from answer_examples(adapter, tokenizer, engine, [example], source, own, batch_size=1)


def run_filter(ctx: RunContext, stats: StageStats) -> None:
    """Answer every question without a pass rate `--filter-samples` times with the filter model."""
    from longrl.models import EmbeddingStore, load_model
    from longrl.rollout.base import SamplingParams
    from longrl.rollout.hf import HFEngine
    from longrl.rollout.prompts import VideoSource
    from longrl.video import SamplingConfig

    cfg = ctx.cfg
    records = ctx.log("filter")
    questions = ctx.log(cfg.question_stage).values()
    stats.total = len(questions)
    pending = [q for q in questions if not ctx.is_done("filter", q["id"])]
    stats.skipped = stats.total - len(pending)
    if not pending:
        return
    # Questions of one video come one after another, so its cached encoding is reused.
    pending.sort(key=lambda q: (q["video"], q["id"]))

    loaded = load_model(cfg.filter_model, dtype=resolved_dtype(cfg.dtype, cfg.device), device=cfg.device)
    adapter, tokenizer = loaded.adapter, loaded.tokenizer
    engine = HFEngine(adapter, tokenizer)
    source = VideoSource(
        sampling=SamplingConfig(num_frames=cfg.filter_frames),
        video_config=loaded.video_config,
        backend=cfg.video_backend,
        store=EmbeddingStore.for_adapter(adapter),
    )
    params = SamplingParams(
        n=cfg.filter_samples,
        max_new_tokens=cfg.filter_max_tokens,
        temperature=cfg.filter_temperature,
    )
    examples = [example_of(q, ctx.video_root) for q in pending]
    with ctx.task("filter", len(pending)) as advance:
        answers = answer_each(adapter, tokenizer, engine, examples, source, params, cfg.seed)
        for answered in answers:
            ex = answered.example
            if answered.error is not None:
                ctx.reject(stats, ex.id, "video_unreadable", answered.error)
            else:
                scored = score_responses(answered.texts, ex.answer, ex.options)
                records.append(
                    {"id": ex.id, **scored, "samples": len(answered.texts), "model": str(cfg.filter_model)}
                )
                stats.done += 1
            advance(1)
