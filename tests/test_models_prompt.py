"""The prompt format: ids equal tokenizing the text, the chat template renders the same text, SFT labels
mask exactly the prompt, responses parse. References: the tokenizer on the whole string, hand-written text."""

from __future__ import annotations

import pytest
import torch
from tiny_model import tiny_model

import longrl.models as M
from longrl.models import prompt as P


def test_prompt_text_layout():
    text = P.build_prompt_text(
        "What is shown?", ["a dog", "B. a cat"], num_video_tokens=3, timestamps=[0, 2.5]
    )
    assert text == (
        f"<|im_start|>system\n{P.SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|video_pad|><|video_pad|><|vision_end|>"
        "Frames sampled at 0.0s, 2.5s.\nQuestion: What is shown?\nOptions:\nA. a dog\nB. a cat<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "<think>" in P.SYSTEM_PROMPT and "<answer>" in P.SYSTEM_PROMPT
    no_video = P.build_prompt_text("Why?")
    assert "<|vision_start|>" not in no_video and "Options" not in no_video


@pytest.mark.parametrize("n_video", [0, 1, 37])
def test_prompt_ids_equal_tokenizing_the_text(n_video):
    _, tok = tiny_model()
    kwargs = {"num_video_tokens": n_video, "timestamps": [1.0, 3.0] if n_video else None}
    ids = P.build_prompt_ids(tok, "How many cars?", ["one", "two", "three"], **kwargs)
    text = P.build_prompt_text("How many cars?", ["one", "two", "three"], **kwargs)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("<|video_pad|>")) == n_video


def test_chat_template_renders_the_same_prompt():
    _, tok = tiny_model()
    messages = P.build_messages("What next?", ["x", "y"], video="v.mp4", timestamps=[0.0])
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == P.build_prompt_text("What next?", ["x", "y"], num_video_tokens=1, timestamps=[0.0])


def test_sft_example_masks_the_prompt():
    _, tok = tiny_model()
    response = P.format_response("The dog runs first.", "A")
    ex = P.build_sft_example(tok, "What first?", ["dog", "cat"], response, num_video_tokens=4)
    prompt = P.build_prompt_ids(tok, "What first?", ["dog", "cat"], num_video_tokens=4)
    assert ex.response_start == len(prompt) and ex.input_ids[: len(prompt)] == prompt
    assert ex.labels[: len(prompt)] == [P.IGNORE_INDEX] * len(prompt)
    assert ex.labels[len(prompt) :] == ex.input_ids[len(prompt) :]
    assert ex.input_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(ex.input_ids[len(prompt) :]) == response + "<|im_end|>"


def test_parse_response():
    ok = P.parse_response(" <think>a\nb</think> <answer> C </answer><|im_end|>")
    assert ok == P.ParsedResponse("a\nb", "C", True)
    assert P.parse_response("blah <answer>B</answer> more <answer>D</answer>") == P.ParsedResponse(
        None, "D", False
    )
    assert P.parse_response("<think>x</think>") == P.ParsedResponse(None, None, False)
    assert P.parse_response(P.format_response(" t ", " A ")).well_formed


def test_options_letters():
    assert P.format_options(["x", "(B) y", "C. z", "Dz"]) == "A. x\n(B) y\nC. z\nD. Dz"
    with pytest.raises(ValueError):
        P.option_letter(26)


def test_num_video_tokens_and_pad_batch():
    assert P.num_video_tokens((4, 10, 12)) == 120
    assert P.num_video_tokens(torch.tensor([2, 4, 6]), merge_size=2) == 12
    assert P.num_video_tokens((2, 4, 6), merge_size=1) == 48
    model, _ = tiny_model()
    adapter = M.wrap_model(model)  # the adapter's count is the same function, with the model's merge size
    assert adapter.num_video_tokens((4, 10, 12)) == P.num_video_tokens((4, 10, 12), adapter.merge_size)
    ids, mask = P.pad_batch([[1, 2, 3], [4]], 0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = P.pad_batch([[1, 2, 3], [4]], 9, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_special_token_strings_in_data_stay_text():
    _, tok = tiny_model()
    question = "Is <|video_pad|> here?<|im_end|>"
    ids = P.build_prompt_ids(tok, question, ["<|im_start|>x"], num_video_tokens=2)
    assert ids.count(tok.convert_tokens_to_ids("<|video_pad|>")) == 2
    assert ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2  # system and user turns only
    assert tok.decode(ids) == P.build_prompt_text(question, ["<|im_start|>x"], num_video_tokens=2)
    ex = P.build_sft_example(tok, "q", None, "<think>a<|im_end|></think><answer>B</answer>")
    assert ex.input_ids[ex.response_start :].count(tok.convert_tokens_to_ids("<|im_end|>")) == 1


@pytest.mark.parametrize(
    "text, think, answer, well_formed",
    [
        ("<think>x</think><answer>B</answer>", "x", "B", True),
        ("<think>x</think><answer>A</answer><answer>B</answer>", None, "B", False),  # repeated: last block
        ("<think>a<think>b</think><answer>C</answer>", None, "C", False),  # tag inside think
        ("<answer><answer>B</answer></answer>", None, None, False),  # nested: ambiguous
        ("reasoning <answer> D </answer> trailing", None, "D", False),
        ("no tags at all", None, None, False),
    ],
)
def test_parse_response_never_glues_blocks_together(text, think, answer, well_formed) -> None:
    parsed = P.parse_response(text)
    assert (parsed.think, parsed.answer, parsed.well_formed) == (think, answer, well_formed)
