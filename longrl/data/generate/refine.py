"""Stage 5, refine: the reasoner rewrites each question's reasoning to be concise and consistent with the answer.

The rewrite is checked (`validation.validate_refined`: JSON with a non-empty reasoning, timestamps inside the
video, no conclusion other than the answer, not longer than the original). An unusable rewrite, or a backend
that fails after all its retries, keeps the original reasoning: the record says so (`refined: false`,
`refine_problem`), the manifest counts it, and the question is never lost.

Record: the question record with the final "reasoning", plus {"refined", "original_reasoning",
"refine_problem"}.
"""

from __future__ import annotations

from longrl.data.generate.context import RunContext, StageStats, run_bounded
from longrl.data.generate.prompts import REFINE_SYSTEM, refine_prompt
from longrl.data.generate.questions import request_seed
from longrl.data.generate.validation import InvalidOutput, validate_refined


def run_refine(ctx: RunContext, stats: StageStats) -> None:
    """Refine every question that has no refined record yet."""
    from longrl.llm import BackendRequestError, system_message, user_message

    cfg = ctx.cfg
    records = ctx.log("refine")
    questions = ctx.log("questions").values()
    stats.total = len(questions)
    pending = [q for q in questions if q["id"] not in records]
    stats.skipped = stats.total - len(pending)
    if not pending:
        return
    backend = ctx.backend("reasoner")

    def work(question: dict) -> tuple[str | None, str]:
        prompt = refine_prompt(
            question["question"], question["options"], question["answer"], question["reasoning"],
            question["duration_s"],
        )  # fmt: skip
        messages = [system_message(REFINE_SYSTEM), user_message(prompt)]
        try:
            reply = backend.chat(
                messages,
                max_tokens=cfg.refine_max_tokens,
                temperature=0.0,
                seed=request_seed(cfg.seed, question["id"], 100),
            )
        except BackendRequestError as err:
            return None, f"backend_error: {err}"
        try:
            return (
                validate_refined(
                    reply,
                    answer=question["answer"],
                    original=question["reasoning"],
                    duration_s=question["duration_s"],
                ),
                "",
            )
        except InvalidOutput as bad:
            return None, str(bad)

    with ctx.task("refine", len(pending)) as advance:

        def on_done(question: dict, result: tuple[str | None, str]) -> None:
            refined, problem = result
            record = {
                **question,
                "reasoning": refined if refined is not None else question["reasoning"],
                "refined": refined is not None,
                "original_reasoning": question["reasoning"],
                "refine_problem": problem,
            }
            records.append(record)
            stats.done += 1
            if refined is None:
                key = f"kept original reasoning ({problem.split(':', 1)[0]})"
                stats.counts[key] = stats.counts.get(key, 0) + 1
            advance(1)

        run_bounded(pending, work, on_done, cfg.concurrency)
