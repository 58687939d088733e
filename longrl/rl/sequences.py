"""Rollouts -> right-padded [prompt | response] training sequences, and their decoder inputs.

The trainer scores exactly the tokens the engine sampled, at exactly the positions the engine sampled them:

- The prompt part goes through `adapter.build_inputs` with the same ids and video (cached embeddings, grid,
  seconds per temporal patch) the engine's prompt was built from, so its embeddings and 3-D mrope positions
  are the engine's.
- The response part is text after the prompt. `build_inputs` would treat a sampled `<|video_pad|>` or
  `<|image_pad|>` id as a placeholder (and reject the sequence: more pads than video embeddings), so those
  positions are built from a plain text id and then take `embed_tokens` of the sampled ids. Text after the
  prompt gets running positions from the prompt's max + 1 on all three axes, which is where the engine's
  decoder put each sampled token (`ModelAdapter.decode_position_ids` with the prompt's rope_deltas).

Logprob layout: `targets = next_token_targets(input_ids, response_mask)`, so column i of every [N, L] tensor
(targets, logprobs, rollout_logprobs, loss mask) scores token i + 1. The loss mask is `targets != -100`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from longrl.models.base import ModelAdapter, MultimodalInputs
from longrl.parallel.sp_prefill import IGNORE_INDEX, next_token_targets
from longrl.rollout.base import RolloutResult


@dataclass
class SequenceBatch:
    """N sampled responses with their prompts, right-padded to L, one video per sequence.

    input_ids [N, L] int64 ([prompt | response | pad]); attention_mask [N, L] int64 (1 on real tokens);
    response_mask [N, L] bool (the response tokens, stop token included); targets [N, L] int64 (next token
    where it is a response token, else -100); rollout_logprobs [N, L] float32 (the engine's logprob of
    targets[:, i] at column i, 0 elsewhere); video_embeds: N tensors [n_i, H] (shared with the cache, not
    copied); video_grid_thw [N, 3] int64; second_per_grid_ts [N] float32; advantages [N] float32; group_ids
    [N] int64 (the prompt each response answers); text_id: the plain text id put at response positions
    before `build_inputs` (see the module docstring).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    targets: torch.Tensor
    rollout_logprobs: torch.Tensor
    video_embeds: list[torch.Tensor]
    video_grid_thw: torch.Tensor
    second_per_grid_ts: torch.Tensor
    advantages: torch.Tensor
    group_ids: torch.Tensor
    text_id: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def loss_mask(self) -> torch.Tensor:
        """[N, L] bool: columns whose logprob is scored (one per response token)."""
        return self.targets != IGNORE_INDEX

    def select(self, rows: Sequence[int] | slice) -> SequenceBatch:
        """The given rows, trimmed to their longest sequence (right padding: only pad columns are cut)."""
        index = torch.arange(len(self))[rows] if isinstance(rows, slice) else torch.as_tensor(rows).long()
        length = int(self.attention_mask[index].sum(-1).max()) if index.numel() else 0
        cols = slice(0, length)
        return replace(
            self,
            input_ids=self.input_ids[index, cols],
            attention_mask=self.attention_mask[index, cols],
            response_mask=self.response_mask[index, cols],
            targets=self.targets[index, cols],
            rollout_logprobs=self.rollout_logprobs[index, cols],
            video_embeds=[self.video_embeds[i] for i in index.tolist()],
            video_grid_thw=self.video_grid_thw[index],
            second_per_grid_ts=self.second_per_grid_ts[index],
            advantages=self.advantages[index],
            group_ids=self.group_ids[index],
        )


def build_sequences(
    prompt_ids: Sequence[Sequence[int]],
    videos: Sequence,
    results: Sequence[RolloutResult],
    advantages: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    pad_id: int,
) -> SequenceBatch:
    """One right-padded sequence per rollout result.

    prompt_ids[p]: the real prompt ids of prompt p (what the engine generated from, padding removed);
    videos[p]: its `VideoEmbedding` (embeds [n, H], grid_thw, second_per_grid_t); results[j]: a response to
    prompt results[j].prompt_index; advantages [N], group_ids [N] per result. pad_id: the padding id (also
    the text id put at response positions for `build_inputs`).
    """
    if len(results) != advantages.shape[0] or len(results) != group_ids.shape[0]:
        raise ValueError(
            f"{len(results)} results but {advantages.shape[0]} advantages / {group_ids.shape[0]} ids"
        )
    lengths = [len(prompt_ids[r.prompt_index]) + len(r) for r in results]
    n, length = len(results), max(lengths, default=0)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    response_mask = torch.zeros((n, length), dtype=torch.bool)
    rollout_logprobs = torch.zeros((n, length), dtype=torch.float32)
    for i, r in enumerate(results):
        prompt = torch.as_tensor(list(prompt_ids[r.prompt_index]), dtype=torch.long)
        start, end = prompt.numel(), lengths[i]
        input_ids[i, :start] = prompt
        input_ids[i, start:end] = r.token_ids
        attention_mask[i, :end] = 1
        response_mask[i, start:end] = True
        # Column i scores token i + 1: the response's logprobs sit one column to the left.
        rollout_logprobs[i, start - 1 : end - 1] = r.logprobs.float()
    vids = [videos[r.prompt_index] for r in results]
    return SequenceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        targets=next_token_targets(input_ids, response_mask),
        rollout_logprobs=rollout_logprobs,
        video_embeds=[v.embeds for v in vids],
        video_grid_thw=torch.tensor([list(v.grid_thw) for v in vids], dtype=torch.long).reshape(-1, 3),
        second_per_grid_ts=torch.tensor([float(v.second_per_grid_t) for v in vids], dtype=torch.float32),
        advantages=advantages.float(),
        group_ids=group_ids.long(),
        text_id=int(pad_id),
    )


def model_inputs(
    adapter: ModelAdapter, batch: SequenceBatch, video_embeds: Sequence[torch.Tensor] | None = None
) -> MultimodalInputs:
    """Decoder inputs of `batch` for `adapter` (policy or reference: each uses its own token embeddings).

    video_embeds: the N videos' embeddings to place (default batch.video_embeds). Returns inputs_embeds
    [N, L, H] (differentiable w.r.t. the adapter's token embeddings), position_ids [3, N, L], attention_mask.
    """
    device = adapter.device
    response = batch.response_mask.to(device)
    plain_ids = batch.input_ids.to(device).masked_fill(response, batch.text_id)
    inputs = adapter.build_inputs(
        plain_ids,
        batch.attention_mask,
        list(batch.video_embeds if video_embeds is None else video_embeds),
        batch.video_grid_thw,
        batch.second_per_grid_ts,
    )
    sampled = adapter.embed_tokens(batch.input_ids.to(device)[response]).to(inputs.inputs_embeds.dtype)
    embeds = inputs.inputs_embeds.masked_scatter(response.unsqueeze(-1), sampled)
    return replace(inputs, inputs_embeds=embeds)
