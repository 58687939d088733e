"""PPO-ptx: a supervised term on chain-of-thought rows, added to every GRPO update (InstructGPT's "ptx").

    loss = GRPO loss + algo.ptx_coef * (sum of -log p over the ptx rows' response tokens) / (their count)

The ptx rows (`data.ptx`, SFT rows: question, options, answer, reasoning) are scored exactly as SFT scores
them (`longrl.sft.batch.build_sft_batch`: `<think>{reasoning}</think><answer>{answer}</answer>`), their
videos through the run's embedding cache, the logprobs sequence-parallel over the sp group, in micro-batches
of the GRPO update's size. Each optimizer step draws `algo.ptx_batch_size` rows per dp rank (default: the RL
batch size) from their own seeded stream, and normalizes by the ptx tokens of all dp ranks, so any dp or
micro-batch split gives the gradient of one big batch. The weight is per GRPO update: a step that takes
none (every group dropped) skips the term too. The `loss` metric stays the GRPO loss; `ptx_loss` is logged
beside it.

Why: GRPO learns only from prompts whose rollouts disagree, and a category the model already gets right is
almost never among them, so nothing holds it while the shared weights move; an outcome reward also leaves
every reasoning token that does not decide the answer unconstrained (e.g. the colour a spatial answer's
chain of thought names on its way to the region). The supervised term anchors both on the SFT data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from longrl.parallel.sp_attention import sp_attention
from longrl.parallel.sp_prefill import sp_token_logprobs
from longrl.rollout.prompts import encode_videos
from longrl.sft.batch import build_sft_batch, scored_tokens
from longrl.train.data import next_encoded
from longrl.train.fsdp import forward_region

if TYPE_CHECKING:
    from longrl.data.schema import Example
    from longrl.models.embedding_store import VideoEmbedding
    from longrl.rl.step import GRPOSetup
    from longrl.train.data import TrainData


@dataclass
class PtxTerm:
    """The supervised term of a GRPO run: where its rows come from and how much it weighs.

    data: this dp rank's stream of ptx rows (every row has reasoning). coef: its weight (> 0). batch_size:
    rows per dp rank per optimizer step. max_response_tokens: responses cut to this many tokens (the run's
    rollout.max_new_tokens). on_failed(example, reason): a row whose video cannot be decoded (the caller
    excludes it from `data` or raises); another row takes its place.
    """

    data: TrainData
    coef: float
    batch_size: int
    max_response_tokens: int
    on_failed: Callable[[Example, str], None]

    def draw(self, setup: GRPOSetup) -> tuple[list[Example], list[VideoEmbedding]]:
        """The next `batch_size` rows whose videos decode, with their embeddings (a collective over sp)."""

        def encode(paths):
            with torch.no_grad(), setup.autocast():
                return encode_videos(setup.adapter, paths, setup.source)

        return next_encoded(self.data, self.batch_size, encode, self.on_failed)


def ptx_backward(
    setup: GRPOSetup,
    term: PtxTerm,
    dp_sum: Callable[[list[float]], list[float]],
    micro_batch_size: int | None = None,
) -> float:
    """Add the gradient of coef * (mean -log p per ptx token over all dp ranks) to the parameters' `.grad`
    (before `sync_gradients`, like the policy loss's backward). Returns that mean (the `ptx_loss` metric).

    dp_sum: sums a list of floats over the dp ranks (the token count that normalizes, and the metric).
    micro_batch_size: rows per forward/backward (None: all at once); every dp rank runs the same number."""
    adapter, state = setup.adapter, setup.state
    examples, videos = term.draw(setup)
    # The normalizer first, from the tokenizer alone: each micro-batch's backward needs it.
    counts = [scored_tokens(setup.tokenizer, ex, term.max_response_tokens) for ex in examples]
    (tokens,) = dp_sum([float(sum(counts))])
    micro = micro_batch_size or len(examples)
    total = 0.0
    for i in range(0, len(examples), micro):

        def score(rows=slice(i, i + micro)):
            # Built inside the region: with FSDP the token embeddings are gathered only there.
            batch = build_sft_batch(
                adapter,
                setup.tokenizer,
                examples[rows],
                videos[rows],
                max_response_tokens=term.max_response_tokens,
            )
            if batch.num_tokens != sum(counts[rows]):
                raise RuntimeError(f"PPO-ptx: {batch.num_tokens} scored tokens, {sum(counts[rows])} counted")
            return sp_token_logprobs(adapter, batch.inputs, batch.targets, state, attn=setup.sp_attn)

        with setup.autocast():
            logp = forward_region(adapter.model, score)
        # logp is 0 where nothing is scored, so the sum runs over response tokens only.
        token_sum = -logp.float().sum()
        # Backward inside the SP block, as the policy loss's: checkpointed layers recompute their SP attention.
        with sp_attention(adapter, state.sp_group, setup.sp_attn):
            (token_sum * (term.coef / tokens)).backward()
        total += float(token_sum.detach())
    (total,) = dp_sum([total])
    return total / tokens
