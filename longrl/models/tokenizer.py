"""A small byte-level BPE tokenizer trained locally, with Qwen2.5-VL's special tokens and chat template.

Nothing here touches a model hub: the merges are learned from an embedded corpus, so the tokenizer is
the same on every machine for a given vocabulary size. Byte-level BPE encodes any text (unknown words fall
back to bytes), so every string round-trips through encode/decode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# The one definition of the token strings (longrl.models.prompt imports them). Special tokens, in id order
# (ids 0..6). Same strings as Qwen2.5-VL's tokenizer, so prompts written for the real model work unchanged on
# the tiny one.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# Reasoning/answer tags (the response format of longrl.models.prompt): ordinary added tokens (not "special"),
# so `skip_special_tokens=True` keeps them and the reward parser still sees them in decoded text.
THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAG_TOKENS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# A Qwen2.5-VL style chat template. Content is a string, or a list of {"type": "text"|"video"|"image"} parts;
# a video part becomes one <|video_pad|> that the prompt builder (or an HF processor) expands to n pads.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Training text: English about videos and questions, digits, times, letters, option lists and the tags.
_CORPUS = """\
You are a helpful assistant. Watch the video carefully and answer the question.
Think step by step inside <think> </think> tags, then give the final answer inside <answer> </answer> tags.
<think>The person opens the door at the start of the video and then walks to the kitchen.</think><answer>A</answer>
<think>First the red car stops, then the blue car turns left. So the answer is B.</think><answer>B</answer>
<think>The dog runs across the field twice before it sits down near the tree.</think><answer>C</answer>
<think>At 12.5 seconds the woman picks up the cup; at 30.0 seconds she puts it down.</think><answer>D</answer>
Question: What does the man do after he closes the window?
Question: How many people are in the room at the end of the video?
Question: Which object appears first in the video?
Question: Why does the child start to cry?
Question: Where is the ball when the game ends?
Options:
A. He reads a book.
B. He leaves the room.
C. He turns on the light.
D. He sits on the chair.
E. None of the above.
The video shows a street in the city at night with cars, lights and people walking.
A cat sleeps on the sofa while the television is on. The camera moves slowly to the right.
The chef cuts the onions, heats the pan and cooks the vegetables for five minutes.
Frames sampled at 0.0s, 2.0s, 4.0s, 6.0s, 8.0s, 10.0s, 12.0s, 14.0s, 16.0s, 18.0s, 20.0s.
Frames sampled at 0.5s, 1.5s, 2.5s, 3.5s, 4.5s, 5.5s, 6.5s, 7.5s, 8.5s, 9.5s.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 64 100 128 256 512 1000 2024 3600
one two three four five six seven eight nine ten first second third last before after during
the a an and or but if then so because while when where what which who why how is are was were
red green blue yellow black white person people man woman child dog cat car ball door window table
open close walk run sit stand pick put take give look see watch hold move turn start stop end
The answer is A. The answer is B. The answer is C. The answer is D. The answer is E.
In the beginning, in the middle, at the end, at the same time, for a long time, a few seconds later.
Summary: a long video of a soccer match; the home team scores in the second half and wins 2 to 1.
Caption: a group of friends play cards at a table in a garden on a sunny afternoon.
system user assistant system user assistant video image frame frames seconds minutes time timestamp
"""

# The words of `longrl demo`'s synthetic task (longrl.data.synthetic; the sentences follow the templates of
# its `questions` module, and tests/test_models_tiny.py checks the answers are whole tokens), so that each
# region, colour and count it answers with is one token: a tiny model then decides an answer at one position,
# not spelled out piece by piece ("bottom-left" was 9 tokens, its row and column decided 7 tokens apart).
_TASK_CORPUS = """Which object appeared first? Which object appeared last? Where did the first object appear?
Where is the last object heading? Where is the moving green object heading? Where did the red object appear?
How many times did the blue object appear? How many times did the yellow object appear before it?
The first object is the red object at 3.0s. It appears in the top-left at 3.0s. So the answer is top-left.
The last object to appear is the green object at 21.0s. It moves from the top-right at 24.0s to the
bottom-right at 26.0s. So the answer is bottom-right. The blue object appears in the bottom-left at 9.0s.
The yellow object appears at 2.0s, 12.0s and 20.0s. So the answer is 3. The red object does not appear.
top-left top-right bottom-left bottom-right red green blue yellow white magenta cyan orange
"""

# GPT-2's pre-tokenizer pattern, except that letters joined by '-' stay one piece ("top-left" can be one
# token).
_SPLIT_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+(?:-\p{L}+)*| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def train_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer on the embedded corpus and wrap it for transformers.

    Special tokens get ids 0..6 (`SPECIAL_TOKENS` order); the tag tokens follow the learned vocabulary.
    Deterministic: the same `vocab_size` gives the same vocabulary and merges.
    """
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus a little so frequent pairs are clearly ahead of rare ones (fewer count ties).
    bpe.train_from_iterator((_CORPUS + _TASK_CORPUS * 3).splitlines() * 4, trainer=trainer)
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    # The exact Qwen names the processor/vLLM look for.
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tok
