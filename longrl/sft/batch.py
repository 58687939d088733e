"""Examples + their video embeddings -> one right-padded SFT batch with next-token targets on the response.

Sequence i = prompt (`longrl.models.prompt.build_prompt_ids`: system, video pads, question, options) +
response `<think>{reasoning}</think><answer>{answer}</answer><|im_end|>`. Only response tokens are scored:
targets[i, t] is the token at t+1 when that token belongs to the response, else -100 (prompt, padding).
The answer is the option letter for multiple choice and the answer text for open-ended questions, exactly
what the RL reward's parser reads back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from longrl.models.prompt import IGNORE_INDEX, build_sft_example, encode_response, format_response, pad_batch
from longrl.parallel.sp_prefill import next_token_targets

if TYPE_CHECKING:
    from longrl.data.schema import Example
    from longrl.models.base import ModelAdapter, MultimodalInputs
    from longrl.models.embedding_store import VideoEmbedding


def sft_response(example: Example) -> str:
    """The training target of one example: `<think>{reasoning}</think><answer>{answer}</answer>`."""
    return format_response(example.reasoning, example.answer)


def scored_tokens(tokenizer, example: Example, max_response_tokens: int) -> int:
    """How many tokens of `example` an SFT batch scores (its `num_tokens` share), from the tokenizer alone:
    no embeddings, so a caller can normalize by the total before building the batches."""
    return min(len(encode_response(tokenizer, sft_response(example))), max_response_tokens)


@dataclass
class SFTBatch:
    """One micro batch.

    inputs: decoder inputs (inputs_embeds [B, L, H], position_ids [3, B, L], attention_mask [B, L] right
    padded). targets: [B, L] int64 next-token ids where the next token is a response token, else -100.
    num_tokens: scored tokens (= (targets != -100).sum()). truncated: responses cut to max_response_tokens.
    """

    inputs: MultimodalInputs
    targets: torch.Tensor
    num_tokens: int
    truncated: int


def build_sft_batch(
    adapter: ModelAdapter,
    tokenizer,
    examples: Sequence[Example],
    videos: Sequence[VideoEmbedding],
    *,
    max_response_tokens: int,
) -> SFTBatch:
    """Build the batch for `examples` with videos[i] the embedding of example i's video.

    Responses longer than max_response_tokens (the closing <|im_end|> included) are cut to their first
    max_response_tokens tokens.
    """
    if len(examples) != len(videos):
        raise ValueError(f"{len(examples)} examples but {len(videos)} videos")
    rows, labels, truncated = [], [], 0
    for example, video in zip(examples, videos, strict=True):
        seq = build_sft_example(
            tokenizer,
            example.question,
            example.options or None,
            sft_response(example),
            num_video_tokens=adapter.num_video_tokens(video.grid_thw),
        )
        end = seq.response_start + max_response_tokens
        if len(seq.input_ids) > end:
            truncated += 1
        rows.append(seq.input_ids[:end])
        labels.append(seq.labels[:end])
    input_ids, attention_mask = pad_batch(rows, tokenizer.pad_token_id, side="right")
    label_ids, _ = pad_batch(labels, IGNORE_INDEX, side="right")
    grid = torch.tensor([v.grid_thw for v in videos], dtype=torch.long)
    seconds = torch.tensor([v.second_per_grid_t for v in videos], dtype=torch.float32)
    inputs = adapter.build_inputs(input_ids, attention_mask, [v.embeds for v in videos], grid, seconds)
    targets = next_token_targets(input_ids, label_ids != IGNORE_INDEX).to(inputs.inputs_embeds.device)
    return SFTBatch(inputs, targets, int((targets != IGNORE_INDEX).sum()), truncated)
