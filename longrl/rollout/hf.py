"""The `hf` rollout engine: plain transformers decoding through the model adapter, from cached embeddings.

One `generate` call, for each chunk of prompts:
1. Prefill: ONE forward of the left-padded prompts (`adapter.forward` from inputs_embeds, video embeddings
   already scattered in, with the 3-D mrope positions of `adapter.build_inputs`), filling a KV cache. The
   vision tower never runs here.
2. Share: the cache rows and the last-position logits are repeated n times (`batch_repeat_interleave`), so
   the G samples of a prompt start from one prefill. (The copies are real: G x the prompt's KV memory. Fine
   for tests, CPU and moderate prompts; for 100k-token videos use the vLLM engine, whose prefix cache
   shares the blocks.)
3. Decode: one token per active row per step, fed back as a token embedding at the next 3-D position
   (`adapter.decode_position_ids`: text after the prompt advances all three mrope axes together from the
   prompt's max position + 1, i.e. rope_deltas), which is the position `build_inputs` gives the same token
   in the trainer's full [prompt | response] forward. Rows that sample a stop token leave the batch (their
   cache rows are dropped), so finished samples cost nothing.

Sampling: temperature, then top-k, then top-p, then one multinomial draw on a torch.Generator seeded from
`params.seed`. Logprobs follow the contract of `longrl.rollout.base` (log_softmax(logits / T), before
truncation). The model is put in eval mode for the call (dropout off; HF also disables the KV cache under
gradient checkpointing in training mode) and every module's mode is restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from longrl.models.base import ModelAdapter, MultimodalInputs
from longrl.rollout.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutBatch,
    RolloutResult,
    SamplingParams,
    Weights,
)


def truncate_logits(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k, then outside the top-p nucleus, to -inf.

    scaled: [N, V] float32 logits (already divided by the temperature). top_k 0 = off (ties with the k-th
    value are kept); top_p 1 = off (the smallest set of most likely tokens whose mass reaches top_p is kept;
    the most likely token always is). Returns a new [N, V] tensor.
    """
    vocab = scaled.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop = torch.zeros_like(scaled, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def sample_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row: logits [N, V] (any float dtype) -> (tokens [N] int64, logprobs [N] float32).

    logprobs are log_softmax(logits / params.logprob_temperature) at the chosen tokens (before top-k/top-p).
    Greedy picks the argmax of the raw logits (lowest id on ties).
    """
    logits = logits.float()
    if params.is_greedy:
        tokens = logits.argmax(dim=-1)
        logprobs = torch.log_softmax(logits, dim=-1)
    else:
        scaled = logits / params.temperature
        logprobs = torch.log_softmax(scaled, dim=-1)
        probs = torch.softmax(truncate_logits(scaled, params.top_k, params.top_p), dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def to_left_padding(inputs: MultimodalInputs) -> MultimodalInputs:
    """The same prompts with every row's padding moved to the front (generation appends at the end).

    Real tokens keep their order, embeddings and positions; rope_deltas do not depend on the padding side.
    Returns `inputs` itself when it is already left-padded.
    """
    mask = inputs.attention_mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("every prompt needs at least one real token (a row of attention_mask is all 0)")
    if not (mask[:, :-1] & ~mask[:, 1:]).any():  # no 1 -> 0 step: padding only at the front already
        return inputs
    order = torch.argsort(mask.long(), dim=1, stable=True)  # pads (0) first, real tokens in order
    hidden = inputs.inputs_embeds.shape[-1]
    return MultimodalInputs(
        inputs_embeds=inputs.inputs_embeds.gather(1, order[..., None].expand(-1, -1, hidden)),
        position_ids=inputs.position_ids.gather(2, order[None].expand(3, -1, -1)),
        attention_mask=inputs.attention_mask.gather(1, order),
        rope_deltas=inputs.rope_deltas,
    )


def rope_deltas_of(inputs: MultimodalInputs) -> torch.Tensor:
    """[B, 1] int64: position of the first generated token minus the prompt's real-token count
    (`inputs.rope_deltas`, or derived from the positions: max real position + 1 - count)."""
    if inputs.rope_deltas is not None:
        return inputs.rope_deltas.to(device=inputs.attention_mask.device, dtype=torch.long).view(-1, 1)
    mask = inputs.attention_mask.bool()
    top = inputs.position_ids.masked_fill(~mask[None], -1).amax(dim=(0, 2))
    return (top + 1 - mask.sum(dim=1)).view(-1, 1)


def eos_token_ids(model: nn.Module) -> tuple[int, ...]:
    """The model's eos ids: its generation config's, else its (text) config's."""
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        if cfg is None:
            continue
        eos = getattr(cfg, "eos_token_id", None)
        if eos is None and hasattr(cfg, "get_text_config"):
            eos = getattr(cfg.get_text_config(), "eos_token_id", None)
        if eos is not None:
            return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return ()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() for the block; every module's own training flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class HFEngine:
    """Rollouts with the trainer's own model (weights are shared: nothing to sync after an update).

    adapter: the policy's ModelAdapter. tokenizer: fills `RolloutResult.text` (None: text is None).
    eos_ids: ids that end a response (default: the model's eos ids, e.g. <|im_end|>). prompt_batch_size:
    prompts prefilled and decoded together (None: the whole batch; lower it to bound memory, which grows
    with prompts x n x (prompt + response) tokens).
    """

    name = "hf"

    def __init__(
        self,
        adapter: ModelAdapter,
        tokenizer=None,
        *,
        eos_ids: Sequence[int] | None = None,
        prompt_batch_size: int | None = None,
    ) -> None:
        if prompt_batch_size is not None and prompt_batch_size < 1:
            raise ValueError(f"prompt_batch_size must be >= 1, got {prompt_batch_size}")
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.eos_ids = tuple(int(t) for t in eos_ids) if eos_ids is not None else eos_token_ids(adapter.model)
        self.prompt_batch_size = prompt_batch_size

    # ---- engine interface ------------------------------------------------------------------------------------
    def batch_inputs(self, batch: RolloutBatch) -> MultimodalInputs:
        """The batch's model inputs: its prebuilt ones, or built from its ids and cached video embeddings."""
        if batch.inputs is not None:
            return batch.inputs
        return self.adapter.build_inputs(
            batch.input_ids,
            batch.attention_mask,
            list(batch.video_embeds),
            batch.video_grid_thw,
            batch.second_per_grid_ts,
        )

    @torch.no_grad()
    def generate(self, batch: RolloutBatch, params: SamplingParams) -> list[RolloutResult]:
        """len(batch) * params.n results, prompt-major (see `RolloutEngine.generate`)."""
        adapter = self.adapter
        inputs = to_left_padding(self.batch_inputs(batch))
        deltas = rope_deltas_of(inputs)
        generator = _generator(params.seed, adapter.device)
        stop = () if params.ignore_eos else (*self.eos_ids, *params.stop_token_ids)
        stop_ids = torch.tensor(sorted(set(stop)), dtype=torch.long, device=adapter.device)

        n_prompts = inputs.attention_mask.shape[0]
        chunk = self.prompt_batch_size or n_prompts
        results: list[RolloutResult] = []
        with eval_mode(adapter.model):
            for start in range(0, n_prompts, chunk):
                rows = slice(start, start + chunk)
                part = MultimodalInputs(
                    inputs.inputs_embeds[rows],
                    inputs.position_ids[:, rows],
                    inputs.attention_mask[rows],
                    deltas[rows],
                )
                results += self._generate_chunk(part, params, generator, stop_ids, start)
        return results

    @torch.no_grad()
    def update_weights(self, weights: Weights) -> None:
        """Copy the given tensors into the model (names as in its `state_dict()`); tensors that already are
        the model's own storage are skipped. Raises KeyError for a name the model does not have and
        ValueError for a shape mismatch."""
        own = self.adapter.model.state_dict(keep_vars=True)
        items = weights.items() if isinstance(weights, Mapping) else weights
        for name, value in items:
            if name not in own:
                raise KeyError(f"update_weights: the model has no weight named {name!r}")
            target = own[name]
            if target.shape != value.shape:
                raise ValueError(
                    f"update_weights: {name} is {tuple(target.shape)} here, got {tuple(value.shape)}"
                )
            if target.data_ptr() != value.data_ptr():
                target.data.copy_(value.detach())

    def sleep(self) -> None:
        """Nothing to release: the engine holds no memory between calls (the model is the trainer's)."""

    def wake(self) -> None:
        """Nothing to restore (see `sleep`)."""

    # ---- decoding --------------------------------------------------------------------------------------------
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.adapter.lm_head_weight)

    def _generate_chunk(
        self,
        inputs: MultimodalInputs,
        params: SamplingParams,
        generator: torch.Generator,
        stop_ids: torch.Tensor,
        first_prompt: int,
    ) -> list[RolloutResult]:
        adapter, n, steps = self.adapter, params.n, params.max_new_tokens
        cache = adapter.new_kv_cache()
        hidden = adapter.forward(
            inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask, past_key_values=cache
        )
        logits = self._logits(hidden[:, -1])  # left padding: the last column is every prompt's last token
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
        prompt_mask = inputs.attention_mask.repeat_interleave(n, dim=0)
        deltas = inputs.rope_deltas.repeat_interleave(n, dim=0)

        def next_logits(active: torch.Tensor, tok: torch.Tensor, step: int) -> torch.Tensor:
            mask = torch.cat([prompt_mask[active], prompt_mask.new_ones(active.numel(), step + 1)], dim=1)
            positions = adapter.decode_position_ids(mask, deltas[active], 1)
            hidden = adapter.forward(
                adapter.embed_tokens(tok[:, None]), positions, mask, past_key_values=cache
            )
            return self._logits(hidden[:, -1])

        decoded = self._decode(
            logits,
            steps,
            lambda scores: sample_tokens(scores, params, generator),
            stop_ids,
            cache.batch_select_indices,
            next_logits,
        )
        return self._results(*decoded, n, first_prompt)

    @staticmethod
    def _decode(
        logits: torch.Tensor,
        steps: int,
        sample: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        stop_ids: torch.Tensor,
        keep_rows: Callable[[torch.Tensor], None],
        next_logits: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, list[int], list[bool]]:
        """The decoding loop of the engines: sample, record, retire rows that hit a stop token, feed the rest.

        logits: [N, V] logits of each row's first response token. sample(logits [k, V]) -> (tokens [k] int64,
        logprobs [k] float32). keep_rows(keep [k] int64): drop the cache rows not in `keep` (indices among
        the rows still decoding). next_logits(active [k], tokens [k], step) -> [k, V]: feed the sampled
        tokens as response token `step` of the rows `active` (indices into the N rows). Returns (tokens
        [N, steps] int64, logprobs [N, steps] float32, on CPU; each row's length; whether it stopped).
        """
        total, device = logits.shape[0], logits.device
        tokens = torch.zeros((total, steps), dtype=torch.long, device=device)
        logprobs = torch.zeros((total, steps), dtype=torch.float32, device=device)
        lengths = torch.full((total,), steps, dtype=torch.long, device=device)
        stopped = torch.zeros(total, dtype=torch.bool, device=device)
        active = torch.arange(total, device=device)  # the row of each cache row still decoding
        for step in range(steps):
            tok, logp = sample(logits)
            tokens[active, step] = tok
            logprobs[active, step] = logp
            hit = torch.isin(tok, stop_ids)
            any_hit = bool(hit.any())
            if any_hit:
                lengths[active[hit]] = step + 1
                stopped[active[hit]] = True
            if step + 1 == steps:
                break
            if any_hit:
                keep = (~hit).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                keep_rows(keep)
                active, tok = active[keep], tok[keep]
            logits = next_logits(active, tok, step)
        return tokens.cpu(), logprobs.cpu(), lengths.tolist(), stopped.tolist()

    def _results(
        self,
        tokens: torch.Tensor,
        logprobs: torch.Tensor,
        lengths: list[int],
        stopped: list[bool],
        n: int,
        first_prompt: int,
    ) -> list[RolloutResult]:
        out = []
        for row, (length, hit_stop) in enumerate(zip(lengths, stopped, strict=True)):
            ids = tokens[row, :length].clone()
            text = None
            if self.tokenizer is not None:
                body = ids[:-1] if hit_stop else ids
                text = self.tokenizer.decode(body.tolist(), skip_special_tokens=True)
            out.append(
                RolloutResult(
                    prompt_index=first_prompt + row // n,
                    sample_index=row % n,
                    token_ids=ids,
                    logprobs=logprobs[row, :length].clone(),
                    finish_reason=FINISH_STOP if hit_stop else FINISH_LENGTH,
                    text=text,
                )
            )
        return out


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded with `seed` (None: a seed drawn from torch's global CPU RNG)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
