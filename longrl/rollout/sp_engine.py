"""The `hf` engine, sequence-parallel: prefill AND decode with the prompt's KV cache sharded over sp ranks.

For prompts too long for one device's KV cache (an hour of video is 100k+ tokens). Every rank of the sp
group calls `generate` with the same batch; for each prompt, one at a time:

1. Prefill: the prompt's inputs_embeds (video embeddings scattered in) and 3-D mrope positions are padded
   and sharded along the sequence (`longrl.ops.pad_and_shard`, zigzag by default); each rank runs the
   decoder on its shard with ring or Ulysses attention (`sp_attention`, as the trainer's SP prefill does)
   and keeps ONLY its shard's K/V, per layer (`ShardedKVCache`). The rank holding the prompt's last token
   broadcasts that hidden state; every rank computes the first logits from it.
2. Decode: every rank runs the new tokens' layers (replicated: one token per sample); attention over the
   sharded cache is flash-decoding across ranks (`longrl.parallel.sp_decode`: local partial (out, lse),
   all_gather, LSE merge). The decoded tokens' K/V live on one rank (the one holding the prompt's end), so
   each key is counted once. The n samples share the prefill: the prompt's K/V are stored once per rank,
   not n times.
3. Sampling is `longrl.rollout.hf.sample_tokens` on a generator seeded from `params.seed` (the same seed on
   every rank); the tokens and logprobs of sp rank 0 are broadcast each step, so every rank takes the same
   decisions (stops, rows leaving) even if a backend's arithmetic differed across ranks.

Results follow the `RolloutEngine` contract exactly as `HFEngine` (logprobs = log_softmax(logits / T) before
truncation, stop tokens included, finish reasons). Prompts are decoded one at a time, so at a given seed the
samples equal those of `HFEngine(adapter, prompt_batch_size=1)` (greedy tokens equal any HFEngine's).
Memory per rank: the prompt's K/V / sp + n x response K/V (owner) + one shard's activations.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from longrl import ops
from longrl.models.base import ModelAdapter, MultimodalInputs
from longrl.parallel.groups import ParallelState
from longrl.parallel.sp_attention import resolve_sp_attn, sp_attention
from longrl.parallel.sp_decode import ShardedKVCache, capture_prompt_kv, sp_decode_attention
from longrl.rollout.base import RolloutBatch, RolloutResult, SamplingParams
from longrl.rollout.hf import HFEngine, eval_mode, rope_deltas_of, sample_tokens


class SPHFEngine(HFEngine):
    """Rollouts with the trainer's own model, sequence-parallel over `state.sp_group`.

    state: this process's ParallelState (sp group None / size 1: plain single-process decoding through the
    same code path). attn: "ring", "ulysses" or "auto" (`resolve_sp_attn`) for the prefill. layout: how the
    prompt is sharded ("zigzag" balances causal prefill work; "contiguous"). Weights, tokenizer and eos ids
    as for `HFEngine`; a collective: every rank of the sp group calls `generate` with the same batch.
    """

    name = "hf-sp"

    def __init__(
        self,
        adapter: ModelAdapter,
        tokenizer=None,
        *,
        state: ParallelState,
        attn: str = "auto",
        layout: str = "zigzag",
        eos_ids=None,
    ) -> None:
        super().__init__(adapter, tokenizer, eos_ids=eos_ids, prompt_batch_size=1)
        text = adapter.config.get_text_config()
        self.state = state
        self.attn = resolve_sp_attn(attn, text.num_attention_heads, text.num_key_value_heads, state.sp_size)
        self.layout = layout

    # ---- engine interface ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: RolloutBatch, params: SamplingParams) -> list[RolloutResult]:
        """len(batch) * params.n results, prompt-major (see `RolloutEngine.generate`)."""
        adapter = self.adapter
        inputs = self.batch_inputs(batch)
        deltas = rope_deltas_of(inputs)
        generator = torch.Generator(device=adapter.device)
        generator.manual_seed(self._agreed_seed(params.seed))
        stop = () if params.ignore_eos else (*self.eos_ids, *params.stop_token_ids)
        stop_ids = torch.tensor(sorted(set(stop)), dtype=torch.long, device=adapter.device)
        results: list[RolloutResult] = []
        with eval_mode(adapter.model):
            for row in range(inputs.attention_mask.shape[0]):
                real = inputs.attention_mask[row].bool()
                if not bool(real.any()):
                    raise ValueError(f"prompt {row} has no real token (its attention_mask row is all 0)")
                prompt = MultimodalInputs(
                    inputs.inputs_embeds[row][real][None],
                    inputs.position_ids[:, row][:, real][:, None],
                    inputs.attention_mask[row][real][None],
                    deltas[row : row + 1],
                )
                results += self._generate_one(prompt, params, generator, stop_ids, row)
        return results

    # ---- the two phases ------------------------------------------------------------------------------------
    def prefill(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[ShardedKVCache, torch.Tensor]:
        """Sequence-parallel prefill of ONE prompt: inputs_embeds [1, L, H] (model dtype), position_ids
        [3, 1, L] int64, no padding, the same on every sp rank. Returns this rank's cache (its shard's K/V
        per layer) and the logits of the prompt's last position [1, V] (model dtype), equal on every rank."""
        state, length = self.state, inputs_embeds.shape[1]
        shard = {"sp_size": state.sp_size, "layout": self.layout}
        embeds, _ = ops.pad_and_shard(inputs_embeds, dim=1, pad_value=0, rank=state.sp_rank, **shard)
        positions, _ = ops.pad_and_shard(position_ids, dim=2, pad_value=0, rank=state.sp_rank, **shard)
        # Global position of each shard row (-1: padding), for every rank: who holds the prompt's end.
        index = torch.arange(length, device=inputs_embeds.device)[None]
        where = [
            ops.pad_and_shard(index, dim=1, pad_value=-1, rank=r, **shard)[0][0] for r in range(state.sp_size)
        ]
        end_rank = next(r for r, rows in enumerate(where) if bool((rows == length - 1).any()))
        mine = where[state.sp_rank]
        cache = ShardedKVCache(keep=mine >= 0, owns_decoded=state.sp_rank == end_rank)
        with (
            sp_attention(self.adapter, state.sp_group, self.attn, layout=self.layout),
            capture_prompt_kv(self.adapter, cache),
        ):
            hidden = self.adapter.forward(embeds, positions, None)  # [1, Ls, H]
        if state.sp_rank == end_rank:
            last = hidden[0, mine == length - 1].contiguous()  # [1, H]
        else:
            last = hidden.new_empty((1, hidden.shape[-1]))
        if state.sp_group is not None:
            dist.broadcast(last, src=state.sp_ranks()[end_rank], group=state.sp_group)
        return cache, self._logits(last)

    def decode_step(
        self, cache: ShardedKVCache, tokens: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Feed one token per decoding row: tokens [N] int64, position_ids [3, N, 1] -> next logits [N, V]
        (model dtype), equal on every rank. The owner rank's cache gains the tokens' K/V."""
        embeds = self.adapter.embed_tokens(tokens[:, None])
        with sp_decode_attention(self.adapter, cache, self.state.sp_group):
            hidden = self.adapter.forward(embeds, position_ids, None)
        return self._logits(hidden[:, -1])

    # ---- decoding one prompt (HFEngine._decode over the sharded cache) ------------------------------------
    def _generate_one(
        self,
        prompt: MultimodalInputs,
        params: SamplingParams,
        generator: torch.Generator,
        stop_ids: torch.Tensor,
        prompt_index: int,
    ) -> list[RolloutResult]:
        n, steps, device = params.n, params.max_new_tokens, self.adapter.device
        length = prompt.attention_mask.shape[1]
        cache, logits = self.prefill(prompt.inputs_embeds, prompt.position_ids)

        def next_logits(active: torch.Tensor, tok: torch.Tensor, step: int) -> torch.Tensor:
            # The token sampled at `step` sits after the prompt and `step` earlier response tokens; every
            # row has the same count, so one row's position serves all.
            seen = torch.ones((1, length + step + 1), dtype=torch.long, device=device)
            position = self.adapter.decode_position_ids(seen, prompt.rope_deltas, 1)  # [3, 1, 1]
            return self.decode_step(cache, tok, position.expand(3, active.numel(), 1))

        decoded = self._decode(
            logits.repeat_interleave(n, dim=0),
            steps,
            lambda scores: self._agreed(*sample_tokens(scores, params, generator)),
            stop_ids,
            cache.select_rows,
            next_logits,
        )
        return self._results(*decoded, n, prompt_index)

    # ---- keeping the ranks in step -------------------------------------------------------------------------
    def _agreed_seed(self, seed: int | None) -> int:
        """`seed`, or (None) one drawn from torch's global RNG on sp rank 0 and sent to the group."""
        if seed is not None:
            return int(seed)
        drawn = torch.randint(0, 2**62, (1,)).to(self.adapter.device)
        if self.state.sp_group is not None:
            dist.broadcast(drawn, src=self.state.sp_ranks()[0], group=self.state.sp_group)
        return int(drawn.item())

    def _agreed(self, tokens: torch.Tensor, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sp rank 0's sampled tokens [N] int64 and logprobs [N] float32, on every rank of the group."""
        if self.state.sp_group is None:
            return tokens, logprobs
        # float64 holds token ids exactly (< 2**53) and float32 logprobs losslessly: one message for both.
        packed = torch.stack([tokens.double(), logprobs.double()])
        dist.broadcast(packed, src=self.state.sp_ranks()[0], group=self.state.sp_group)
        return packed[0].long(), packed[1].float()
