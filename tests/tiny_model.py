"""Shared helpers for tests that need the tiny Qwen2.5-VL: one model per test process, random videos."""

from __future__ import annotations

import copy
import functools

import torch

import longrl.models as M
from longrl.models import prompt as P

PATCH_DIM = 3 * 2 * 14 * 14  # channels * temporal patch * patch * patch: one row of pixel_values_videos


@functools.cache
def _cached(seed: int):
    return M.tiny(seed=seed)


def tiny_model(seed: int = 0, *, fresh: bool = False):
    """(model, tokenizer) of the tiny model; `fresh` gives a private copy a test may modify."""
    model, tok = _cached(seed)
    return (copy.deepcopy(model), tok) if fresh else (model, tok)


def random_videos(grids: list[tuple[int, int, int]], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pixel_values_videos [sum t*h*w, 1176] (random, like normalized pixels) and video_grid_thw [N, 3]."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor(grids, dtype=torch.long)
    pixels = torch.randn(int(grid.prod(-1).sum()), PATCH_DIM, generator=g)
    return pixels, grid


def prompt_batch(tokenizer, grids, side: str, merge: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt per video (different questions and lengths), padded on `side`: (input_ids, mask) [B, L]."""
    rows = []
    for i, grid in enumerate(grids):
        options = [f"option {j} for video {i}" for j in range(2 + i)]
        rows.append(
            P.build_prompt_ids(
                tokenizer,
                "What happens first?" + " and then" * i,
                options,
                num_video_tokens=P.num_video_tokens(grid, merge),
            )
        )
    return P.pad_batch(rows, tokenizer.pad_token_id, side=side)
