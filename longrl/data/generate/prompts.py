"""The chat prompts of the caption, questions and refine stages (text only; messages are built by the stages).

The question format follows LongVideo-Reason: one multiple-choice question per request, four options, the
answer letter and a step-by-step reasoning that cites the timestamps of the captions it uses, as strict JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

from longrl.data.generate.records import format_time

# Category -> (title, what such a question asks about). The keys are the released `problem_type` values.
CATEGORIES: dict[str, tuple[str, str]] = {
    "temporal": (
        "Temporal",
        "the order, timing, duration or frequency of events across the video",
    ),
    "goal": (
        "Goal & purpose",
        "why people or agents act as they do, and what they are trying to achieve over the video",
    ),
    "spatial": (
        "Spatial",
        "where people and objects are, how they move and how their positions relate over the video",
    ),
    "plot": (
        "Plot & narrative",
        "how the story or activity develops, its causes and consequences, and how it ends",
    ),
}

CAPTION_SYSTEM = (
    "You describe short video clips accurately and concretely. Describe only what the frames show; "
    "never guess what is outside them."
)

QUESTION_SYSTEM = (
    "You write challenging multiple-choice questions about long videos that you know only from timestamped "
    "captions of their consecutive clips. A good question needs information from several moments of the "
    "video. You answer with one JSON object and nothing else."
)

REFINE_SYSTEM = (
    "You edit the reasoning of multiple-choice questions about videos: make it concise and make every step "
    "consistent with the correct answer. You answer with one JSON object and nothing else."
)

QUESTION_FORMAT = (
    '{"question": "<the question>", "options": ["<option>", "<option>", "<option>", "<option>"], '
    '"answer": "<A, B, C or D>", "reasoning": "<step-by-step reasoning citing timestamps as MM:SS>", '
    '"category": "<category>"}'
)


def caption_prompt(start_s: float, end_s: float, frame_times: Sequence[float]) -> str:
    """The user text that follows the frames of one clip."""
    times = ", ".join(format_time(t) for t in frame_times)
    return (
        f"These {len(frame_times)} frames come from the clip {format_time(start_s)}-{format_time(end_s)} of a "
        f"longer video, in order (at {times}). Describe in 2 to 4 sentences what happens in this clip: the "
        "setting, the people and objects, their actions and how things change, and any text on screen."
    )


def timeline_text(captions: Sequence[tuple[float, float, str]]) -> str:
    """One line per clip: "[MM:SS-MM:SS] caption" (captions are (start_s, end_s, text), in time order)."""
    return "\n".join(
        f"[{format_time(s)}-{format_time(e)}] {' '.join(text.split())}" for s, e, text in captions
    )


def question_prompt(
    category: str,
    duration_s: float,
    captions: Sequence[tuple[float, float, str]],
    number: int,
    count: int,
) -> str:
    """The user text asking for question `number` (1-based) of `count` of `category` about one video."""
    title, about = CATEGORIES[category]
    variety = (
        f" This is question {number} of {count} in this category for this video: ask about something the "
        "others are unlikely to cover."
        if count > 1
        else ""
    )
    return (
        f"The video lasts {format_time(duration_s)} ({duration_s:.1f} s). Captions of its consecutive clips:\n"
        f"{timeline_text(captions)}\n\n"
        f'Write one "{title}" question about the whole video: a question about {about}.{variety} Give four '
        "options (texts without letters), exactly one of them correct and the others plausible, the letter of "
        "the correct option, and a step-by-step reasoning that reaches the answer from the captions and cites "
        "the timestamps it uses (MM:SS, all within the video). Reply with only this JSON object:\n"
        f'{QUESTION_FORMAT}\nwith "category": "{category}".'
    )


def repair_prompt(error: str) -> str:
    """The follow-up user text after an invalid reply; `error` says what was wrong."""
    return (
        f"Your reply cannot be used: {error}. Reply again with only the corrected JSON object in the same "
        f"format:\n{QUESTION_FORMAT}"
    )


def refine_prompt(
    question: str, options: Sequence[str], answer: str, reasoning: str, duration_s: float
) -> str:
    """The user text asking to rewrite one question's reasoning."""
    from longrl.data.schema import LETTERS

    lines = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))
    return (
        f"Question about a video of {format_time(duration_s)}:\n{question}\n{lines}\n"
        f"Correct answer: {answer}\n\nReasoning:\n{reasoning}\n\n"
        "Rewrite the reasoning so that it is concise (a few short steps), keeps the timestamps (MM:SS) of the "
        f"evidence it uses, and leads to answer {answer} without contradicting it. Reply with only this JSON "
        'object: {"reasoning": "<the rewritten reasoning>"}'
    )
