"""The one definition of the prompt and response format, shared by data generation, SFT, RL and eval.

Layout (Qwen2.5-VL chat format; the video comes first in the user turn, as Qwen's processor puts it):

    <|im_start|>system\\n{SYSTEM_PROMPT}<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|video_pad|> x n<|vision_end|>{timestamps line\\n}Question: ...\\n
    Options:\\nA. ...\\nB. ...<|im_end|>\\n
    <|im_start|>assistant\\n
    <think>...</think><answer>...</answer><|im_end|>          (the response; SFT target / RL sample)

n = t*h*w // merge**2 for the video's patch grid. Token ids are built piece by piece (cut only where the
tokenizer splits anyway), so a 20k-pad video costs no tokenizer time and the ids equal those of tokenizing
the whole text; text that comes from data is encoded literally (no special tokens smuggled in).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Token strings are defined once, with the vocabulary (tokenizer.py), and the video-token count once, with
# the adapter interface (base.py); both are importable from here, where the format uses them.
from longrl.models.base import num_video_tokens as num_video_tokens
from longrl.models.tokenizer import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    IM_END,
    IM_START,
    THINK_CLOSE,
    THINK_OPEN,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)

SYSTEM_PROMPT = (
    "You are a helpful assistant. Watch the video and answer the question. "
    "First think step by step inside <think> </think> tags, "
    "then give the final answer inside <answer> </answer> tags. "
    "For a multiple-choice question, the answer is the letter of the correct option."
)

IGNORE_INDEX = -100  # label value the loss skips (prompt and padding)


def option_letter(i: int) -> str:
    """0 -> 'A', 1 -> 'B', ... (at most 26 options)."""
    if not 0 <= i < 26:
        raise ValueError(f"option index {i} out of range A..Z")
    return string.ascii_uppercase[i]


def format_options(options: Sequence[str]) -> str:
    """'A. first\\nB. second ...'; an option already written as 'A. ...' or '(A) ...' is kept as is."""
    lines = []
    for i, opt in enumerate(options):
        letter, opt = option_letter(i), str(opt).strip()
        if re.match(rf"^(\({letter}\)|{letter}[.:)])\s", opt):
            lines.append(opt)
        else:
            lines.append(f"{letter}. {opt}")
    return "\n".join(lines)


def format_timestamps(timestamps: Sequence[float]) -> str:
    """'Frames sampled at 0.0s, 2.0s, 4.0s.' for the frames shown to the model (seconds from video start)."""
    return "Frames sampled at " + ", ".join(f"{float(t):.1f}s" for t in timestamps) + "."


def format_question(
    question: str, options: Sequence[str] | None = None, timestamps: Sequence[float] | None = None
) -> str:
    """The user text after the video: optional timestamps line, the question, the lettered options."""
    parts = []
    if timestamps:
        parts.append(format_timestamps(timestamps))
    parts.append(f"Question: {question.strip()}")
    if options:
        parts.append("Options:\n" + format_options(options))
    return "\n".join(parts)


def format_response(think: str, answer: str) -> str:
    """A response in the required format: '<think>{think}</think><answer>{answer}</answer>'."""
    return f"{THINK_OPEN}{think.strip()}{THINK_CLOSE}{ANSWER_OPEN}{answer.strip()}{ANSWER_CLOSE}"


# A part's text may not contain any of the four tags: otherwise '<answer>A</answer><answer>B</answer>' would
# parse as one well-formed answer 'A</answer><answer>B'.
_NO_TAG = (
    "(?:(?!" + "|".join(re.escape(t) for t in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)) + ").)*?"
)
_THINK = f"{re.escape(THINK_OPEN)}({_NO_TAG}){re.escape(THINK_CLOSE)}"
_ANSWER = f"{re.escape(ANSWER_OPEN)}({_NO_TAG}){re.escape(ANSWER_CLOSE)}"
_RESPONSE_RE = re.compile(rf"^\s*{_THINK}\s*{_ANSWER}\s*$", re.DOTALL)
# For broken formats: every answer block, from each <answer> to the next </answer> (a nested block's text then
# still holds a tag, which makes it ambiguous).
_ANSWER_BLOCK_RE = re.compile(f"{re.escape(ANSWER_OPEN)}(.*?){re.escape(ANSWER_CLOSE)}", re.DOTALL)
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


@dataclass(frozen=True)
class ParsedResponse:
    """think / answer text (None when absent) and whether the whole response had the exact format."""

    think: str | None
    answer: str | None
    well_formed: bool


def parse_response(text: str) -> ParsedResponse:
    """Split a generated response (special tokens already removed) into its think and answer parts.

    well_formed: the text is exactly <think>..</think><answer>..</answer> (whitespace around allowed), with no
    tag inside either part. When the format is broken, answer falls back to the last <answer>..</answer> block
    anywhere in the text, or None when that block is nested (`<answer><answer>B</answer></answer>`: ambiguous).
    """
    text = text.replace(IM_END, "")
    m = _RESPONSE_RE.match(text)
    if m:
        return ParsedResponse(m.group(1).strip(), m.group(2).strip(), True)
    answers = _ANSWER_BLOCK_RE.findall(text)
    last = answers[-1].strip() if answers else None
    if last is not None and any(tag in last for tag in _TAGS):
        last = None
    return ParsedResponse(None, last, False)


def _head(system_prompt: str) -> str:
    return f"{IM_START}system\n{system_prompt}{IM_END}\n{IM_START}user\n"


def _tail(user_text: str) -> str:
    return f"{user_text}{IM_END}\n{IM_START}assistant\n"


def build_prompt_text(
    question: str,
    options: Sequence[str] | None = None,
    *,
    num_video_tokens: int = 0,
    timestamps: Sequence[float] | None = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> str:
    """The full prompt string, ending with the assistant header (generation starts right after it).

    num_video_tokens: pads in the video block (0 = no video block); `timestamps` adds a line naming the
    sampled frames' times (for families that read time from text; Qwen2.5-VL encodes it in positions).
    """
    video = f"{VISION_START}{VIDEO_PAD * num_video_tokens}{VISION_END}" if num_video_tokens else ""
    return _head(system_prompt) + video + _tail(format_question(question, options, timestamps))


def build_messages(
    question: str,
    options: Sequence[str] | None = None,
    *,
    video: object | None = None,
    timestamps: Sequence[float] | None = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> list[dict]:
    """The same prompt as chat messages (HF chat templates, OpenAI-style APIs).

    `video`, if given, is put in the video part as {"type": "video", "video": video}; a Qwen chat template
    renders it as one video pad, which a processor expands to n pads: the text then equals
    `build_prompt_text(..., num_video_tokens=n)`.
    """
    content: list[dict] = []
    if video is not None:
        content.append({"type": "video", "video": video})
    content.append({"type": "text", "text": format_question(question, options, timestamps)})
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": content},
    ]


def _encode(tokenizer, text: str, *, literal: bool = False) -> list[int]:
    # literal: text from data (questions, responses) never turns into special tokens, so a stray
    # "<|im_end|>" or "<|video_pad|>" in a dataset cannot end a turn early or eat a video embedding.
    return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=literal))


def build_prompt_ids(
    tokenizer,
    question: str,
    options: Sequence[str] | None = None,
    *,
    num_video_tokens: int = 0,
    timestamps: Sequence[float] | None = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> list[int]:
    """Token ids of `build_prompt_text(...)`, for RL rollouts and eval.

    Equal to tokenizing that text, except that special-token strings inside the system prompt, question or
    options are encoded as plain text. Pieces are cut only at special tokens and after "system\n".
    """
    ids = _encode(tokenizer, f"{IM_START}system\n")
    ids += _encode(tokenizer, system_prompt, literal=True)
    ids += _encode(tokenizer, f"{IM_END}\n{IM_START}user\n")
    if num_video_tokens:
        start, pad, end = tokenizer.convert_tokens_to_ids([VISION_START, VIDEO_PAD, VISION_END])
        ids += [start] + [pad] * num_video_tokens + [end]
    ids += _encode(tokenizer, format_question(question, options, timestamps), literal=True)
    ids += _encode(tokenizer, f"{IM_END}\n{IM_START}assistant\n")
    return ids


def encode_response(tokenizer, response: str) -> list[int]:
    """Token ids of a response followed by <|im_end|> (the stop token the model must learn to emit)."""
    return _encode(tokenizer, response, literal=True) + [tokenizer.convert_tokens_to_ids(IM_END)]


@dataclass
class SFTExample:
    """input_ids = prompt + response + <|im_end|>; labels = IGNORE_INDEX over the prompt, ids after it.

    response_start: index of the first response token (= prompt length).
    """

    input_ids: list[int]
    labels: list[int]
    response_start: int


def build_sft_example(
    tokenizer,
    question: str,
    options: Sequence[str] | None,
    response: str,
    *,
    num_video_tokens: int = 0,
    timestamps: Sequence[float] | None = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> SFTExample:
    """One SFT sequence. The prompt part is exactly `build_prompt_ids(...)`, so SFT, RL and eval agree."""
    prompt = build_prompt_ids(
        tokenizer,
        question,
        options,
        num_video_tokens=num_video_tokens,
        timestamps=timestamps,
        system_prompt=system_prompt,
    )
    target = encode_response(tokenizer, response)
    return SFTExample(prompt + target, [IGNORE_INDEX] * len(prompt) + target, len(prompt))


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_value: int, *, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to [B, max_len] int64; returns (padded, attention_mask) with mask 1 on real tokens.

    side: "left" (generation: all prompts end at the same column) or "right" (training).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    length = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            continue
        cols = slice(length - n, length) if side == "left" else slice(0, n)
        out[i, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, cols] = 1
    return out, mask
