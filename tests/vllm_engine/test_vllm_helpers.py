"""The vllm engine's pure helpers (no vLLM needed, so these run in the main suite too), and its error without
vLLM. References: hand-built prompts whose video placement is known."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from longrl.errors import BackendError, LongRLError
from longrl.rollout import engine_class
from longrl.rollout.vllm import _eos_ids, assign_videos, collapse_video_pads

PAD = 6  # the video-pad id in these hand-built prompts
OTHER = 9


def test_assign_videos_in_row_order():
    # row 0: two videos (3 + 2 pads), row 1: none, row 2: one video of 4 pads; right padding with PAD-free 0s
    rows = [
        [1, PAD, PAD, PAD, 2, PAD, PAD, 3],
        [1, 2, 3, 0, 0, 0, 0, 0],
        [1, PAD, PAD, PAD, PAD, 2, 0, 0],
    ]
    mask = [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0], [1] * 6 + [0, 0]]
    owners = assign_videos(torch.tensor(rows), torch.tensor(mask), PAD, [3, 2, 4])
    assert owners == [[0, 1], [], [2]]


def test_assign_videos_ignores_padding_that_uses_the_pad_id():
    ids = torch.tensor([[PAD, PAD, 1, PAD, PAD]])  # left padding written with the pad id itself
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    assert assign_videos(ids, mask, PAD, [2]) == [[0]]


@pytest.mark.parametrize(
    "rows,sizes",
    [
        ([[1, PAD, PAD, 2]], [3]),  # too few pads for the video
        ([[1, PAD, PAD, 2]], [1]),  # one video of 1, then a pad with no video left
        ([[1, PAD, 2]], [1, 1]),  # a video no row holds
    ],
)
def test_assign_videos_rejects_mismatched_sizes(rows, sizes):
    ids = torch.tensor(rows)
    with pytest.raises(ValueError):
        assign_videos(ids, torch.ones_like(ids), PAD, sizes)


def test_collapse_video_pads():
    ids = [1, 3, PAD, PAD, PAD, 4, OTHER, 3, PAD, PAD, 4, 2]
    assert collapse_video_pads(ids, PAD, [3, 2]) == [1, 3, PAD, 4, OTHER, 3, PAD, 4, 2]
    assert collapse_video_pads([1, 2], PAD, []) == [1, 2]
    # two videos whose runs touch are cut by their sizes, not merged
    assert collapse_video_pads([PAD] * 5, PAD, [2, 3]) == [PAD, PAD]


@pytest.mark.parametrize(
    "ids,sizes",
    [([1, PAD, PAD, 2], [3]), ([1, PAD, 2], []), ([1, PAD, 2], [1, 1])],
)
def test_collapse_video_pads_rejects_mismatched_runs(ids, sizes):
    with pytest.raises(ValueError):
        collapse_video_pads(ids, PAD, sizes)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_engine_names_the_install(tmp_path):
    cls = engine_class("vllm")  # registered, importable without vLLM
    with pytest.raises(BackendError, match="needs vLLM.*docs/vllm.md") as info:
        cls(model_dir=tmp_path)
    assert isinstance(info.value, LongRLError)  # the CLI prints it as one line, exit 2


def test_eos_ids_of_a_folder(tmp_path):
    """generation_config.json's eos ids win over config.json's (as HFEngine reads the model)."""
    config = {"video_token_id": PAD, "text_config": {"eos_token_id": 2}}
    assert _eos_ids(tmp_path, config) == (2,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    assert _eos_ids(tmp_path, config) == (2, 0)
