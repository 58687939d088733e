"""SFT batches (longrl/sft/batch.py): right padding, targets on the response tokens only, truncation, and
the per-token logprobs equal the HF model's own log-softmax at those positions."""

from __future__ import annotations

from pathlib import Path

import torch

from longrl.data.schema import Example
from longrl.models import Qwen2_5_VLAdapter
from longrl.models.embedding_store import VideoEmbedding
from longrl.models.prompt import IM_END, build_prompt_ids, encode_response, parse_response
from longrl.parallel.groups import single_process_state
from longrl.parallel.sp_prefill import sp_token_logprobs
from longrl.sft.batch import build_sft_batch, sft_response
from tests.tiny_model import tiny_model


def example(i: int, reasoning: str, options=("red", "green", "blue"), answer="B") -> Example:
    return Example(f"q{i}", f"Question number {i}?", list(options), answer, reasoning, "", "video",
                   Path(f"/v/{i}.mp4"), f"{i}.mp4")  # fmt: skip


def video(grid: tuple[int, int, int], hidden: int, seed: int) -> VideoEmbedding:
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2] // 4
    return VideoEmbedding(torch.randn(n, hidden, generator=g) * 0.02, grid, 1.0)


def test_response_format_is_what_the_reward_parser_reads():
    text = sft_response(example(0, "Count the bars."))
    assert text == "<think>Count the bars.</think><answer>B</answer>"
    parsed = parse_response(text)
    assert parsed.well_formed and parsed.answer == "B"
    open_ended = example(1, "It is written.", options=(), answer="64 pixels")
    assert sft_response(open_ended) == "<think>It is written.</think><answer>64 pixels</answer>"


def test_targets_are_the_response_tokens_and_logprobs_match_hf():
    model, tok = tiny_model()
    adapter = Qwen2_5_VLAdapter(model)
    hidden = adapter.hidden_size
    examples = [example(0, "Short."), example(1, "A much longer chain of thought " * 3, options=("a", "b"))]
    videos = [video((2, 4, 4), hidden, 0), video((2, 2, 4), hidden, 1)]
    batch = build_sft_batch(adapter, tok, examples, videos, max_response_tokens=512)

    mask = batch.inputs.attention_mask
    assert mask.shape[0] == 2 and bool(mask[:, 0].all())  # right padded: every row starts with real tokens
    for row, (ex, vid) in enumerate(zip(examples, videos, strict=True)):
        prompt = build_prompt_ids(
            tok, ex.question, ex.options, num_video_tokens=adapter.num_video_tokens(vid.grid_thw)
        )
        response = encode_response(tok, sft_response(ex))
        assert response[-1] == tok.convert_tokens_to_ids(IM_END)  # the model learns to stop
        scored = batch.targets[row][batch.targets[row] != -100].tolist()
        assert scored == response  # exactly the response (and <|im_end|>), nothing of the prompt
        first = int((batch.targets[row] != -100).nonzero()[0])
        assert first == len(prompt) - 1  # the last prompt position predicts the first response token
        assert int(mask[row].sum()) == len(prompt) + len(response)
    assert batch.num_tokens == sum(len(encode_response(tok, sft_response(ex))) for ex in examples)

    # Reference: the HF model's own logits on the same inputs, log-softmax, gathered at the targets.
    with torch.no_grad():
        logp = sp_token_logprobs(adapter, batch.inputs, batch.targets, single_process_state())
        logits = adapter.logits(
            batch.inputs.inputs_embeds, batch.inputs.position_ids, batch.inputs.attention_mask
        )
    reference = torch.log_softmax(logits.float(), -1).gather(-1, batch.targets.clamp_min(0).unsqueeze(-1))[
        ..., 0
    ]
    scored = batch.targets != -100
    torch.testing.assert_close(logp[scored], reference[scored], atol=1e-5, rtol=1e-5)
    assert bool((logp[~scored] == 0).all())


def test_long_responses_are_truncated_and_counted():
    model, tok = tiny_model()
    adapter = Qwen2_5_VLAdapter(model)
    examples = [example(0, "word " * 40), example(1, "ok")]
    videos = [video((2, 2, 2), adapter.hidden_size, 0)] * 2
    batch = build_sft_batch(adapter, tok, examples, videos, max_response_tokens=8)
    assert batch.truncated == 1
    counts = (batch.targets != -100).sum(-1).tolist()
    full = len(encode_response(tok, sft_response(examples[1])))
    assert counts == [8, min(8, full)]
