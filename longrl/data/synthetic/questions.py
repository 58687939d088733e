"""Questions about a timeline in the paper's four categories, each with a short timestamped chain of thought.

Three styles (TaskConfig.questions). "lookup": each question asks one fact about a named object, spread over
the whole video (the 2-layer tiny model learns "first" but not to look up a named colour in minutes):
    temporal  "Which object appeared first?"                                    -> a colour
    goal      "Where is the moving green object heading?"                      -> the region it moves to
    spatial   "Where did the blue object appear?"                              -> a region
    plot      "How many times did the red object appear?"                      -> a count (0 to 3)
"multihop": every question needs facts from more than one moment of the video:
    temporal  "Which object appeared right after the red object appeared?"     -> a colour
    goal      "Where is the moving green object heading?"                      -> the region it moves to
    spatial   "Where was the blue object when the yellow object appeared?"     -> a region
    plot      "How many times did the red object appear before the yellow object appeared?" -> a count
"ordinal": every question is about the first or the last object to appear, which the video must be scanned
to find (what `longrl demo` asks; the tiny model learns to find them without being told a colour):
    temporal  "Which object appeared first?"                                    -> a colour
    goal      "Where is the last object heading?" (only when it moves)          -> the region it moves to
    spatial   "Where did the first object appear?"                              -> a region
    plot      "Which object appeared last?"                                     -> a colour
An object named as the reference moment ("when the yellow object appeared") appears exactly once in the
video, so the moment is unique. Wording is fixed templates: a tiny model learns the task, not the phrasing.

`candidates(timeline, category)` lists every question of a category the timeline supports, with the answer
as text; `with_options` turns one into four options: in canonical order (TaskConfig.canonical_options), or
with the answer at a given slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longrl.data.synthetic.timeline import REGIONS, Episode, Timeline

CATEGORIES = ("temporal", "goal", "spatial", "plot")
NUM_OPTIONS = 4


@dataclass(frozen=True)
class Candidate:
    """A question before its options are drawn: the answer as text, the distractor pool, the reasoning.

    distractors: groups of wrong answers, preferred group first (colours seen in the video before unseen
    ones); the first NUM_OPTIONS - 1 after a seeded shuffle within each group are used. Empty for counts,
    whose distractors are drawn around the answer.
    """

    category: str
    question: str
    answer: str
    distractors: tuple[tuple[str, ...], ...]
    reasoning: str
    key: tuple  # what the question is about (for picking distinct questions of one video)
    canonical: tuple[str, ...] = ()  # the fixed option order (all possible answers), when options use one


@dataclass(frozen=True)
class Question:
    """A finished multiple-choice question: options[answer_index] is correct."""

    category: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    reasoning: str

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_index]


def _region_candidate(
    category: str, question: str, where: str, reasoning: str, key: tuple, canonical: tuple[str, ...] = REGIONS
) -> Candidate:
    """A question whose answer is the region `where`; the distractors are the other three regions."""
    return Candidate(
        category, question, where, (tuple(r for r in REGIONS if r != where),), reasoning, key, canonical
    )


def _ordinal_colour_candidate(
    timeline: Timeline, category: str, question: str, colour: str, reasoning: str, key: tuple
) -> Candidate:
    """Which object appeared first / last: the answer is `colour`; options are the task's colours in order."""
    return Candidate(
        category,
        question,
        colour,
        _other_colours(timeline, {colour}),
        reasoning,
        key,
        canonical=timeline.config.colours,
    )


def seconds(t: float) -> str:
    """A timestamp as the prompt writes the sampled frames' times: one decimal and 's' (6 -> '6.0s')."""
    return f"{t:.1f}s"


def _once(timeline: Timeline) -> list[Episode]:
    """Episodes of objects that appear exactly once: unambiguous reference moments."""
    return [e for e in timeline.episodes if timeline.appearance_count(e.colour) == 1]


def _other_colours(timeline: Timeline, exclude: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(colours in the video, colours of the palette not in the video), both without `exclude`."""
    seen = tuple(c for c in timeline.colours if c not in exclude)
    unseen = tuple(c for c in timeline.config.colours if c not in timeline.colours and c not in exclude)
    return seen, unseen


def temporal_candidates(timeline: Timeline) -> list[Candidate]:
    """The object that appeared next after a once-appearing object."""
    out = []
    order = list(timeline.episodes)
    for anchor in _once(timeline):
        k = order.index(anchor)
        if k + 1 >= len(order):
            continue
        nxt = order[k + 1]
        reasoning = (
            f"The {anchor.colour} object appears at {seconds(anchor.start_s)}. "
            f"The next object to appear is the {nxt.colour} object at {seconds(nxt.start_s)}. "
            f"So the answer is {nxt.colour}."
        )
        out.append(
            Candidate(
                "temporal",
                f"Which object appeared right after the {anchor.colour} object appeared?",
                nxt.colour,
                _other_colours(timeline, {anchor.colour, nxt.colour}),
                reasoning,
                ("temporal", anchor.colour),
            )
        )
    return out


def goal_candidates(timeline: Timeline) -> list[Candidate]:
    """The region an object that moves exactly once in the video is heading to."""
    out = []
    for colour in timeline.colours:
        moving = [e for e in timeline.episodes_of(colour) if e.moves]
        if len(moving) != 1:
            continue
        e = moving[0]
        dest = REGIONS[e.to_region]
        reasoning = (
            f"The {colour} object is in the {REGIONS[e.region]} at {seconds(e.start_s)}. "
            f"It starts to move at {seconds(e.move_start_s)} and stops in the {dest} at {seconds(e.move_end_s)}. "
            f"So the answer is {dest}."
        )
        out.append(
            _region_candidate(
                "goal", f"Where is the moving {colour} object heading?", dest, reasoning, ("goal", colour), ()
            )
        )
    return out


def spatial_candidates(timeline: Timeline) -> list[Candidate]:
    """Where another object was (still, for spatial_window_s either side) when a once-appearing object appeared."""
    out = []
    window = timeline.config.spatial_window_s
    for anchor in _once(timeline):
        t = anchor.start_s
        for e in timeline.episodes:
            if e.colour == anchor.colour:
                continue
            region = e.region_at(t)
            if region is None or not e.still_in(region, t - window, t + window):
                continue
            where = REGIONS[region]
            reasoning = (
                f"The {anchor.colour} object appears at {seconds(t)}. "
                f"At that time the {e.colour} object is in the {where}. So the answer is {where}."
            )
            out.append(
                _region_candidate(
                    "spatial",
                    f"Where was the {e.colour} object when the {anchor.colour} object appeared?",
                    where,
                    reasoning,
                    ("spatial", anchor.colour, e.colour),
                    (),
                )
            )
    return out


def _count_sentence(colour: str, starts: list[float]) -> str:
    if not starts:
        return f"Before that, the {colour} object does not appear."
    times = [seconds(s) for s in starts]
    listed = times[0] if len(times) == 1 else ", ".join(times[:-1]) + " and " + times[-1]
    return f"Before that, the {colour} object appears at {listed}."


def plot_candidates(timeline: Timeline) -> list[Candidate]:
    """How many times an object appeared before a once-appearing object appeared (count options 4 in a row)."""
    out = []
    for anchor in _once(timeline):
        for colour in timeline.colours:
            if colour == anchor.colour:
                continue
            starts = [e.start_s for e in timeline.episodes_of(colour) if e.start_s < anchor.start_s]
            count = len(starts)
            reasoning = (
                f"The {anchor.colour} object appears at {seconds(anchor.start_s)}. "
                f"{_count_sentence(colour, starts)} So the answer is {count}."
            )
            out.append(
                Candidate(
                    "plot",
                    f"How many times did the {colour} object appear before the {anchor.colour} object appeared?",
                    str(count),
                    (),  # counts: drawn by `with_options` from a window around the answer
                    reasoning,
                    ("plot", anchor.colour, colour),
                )
            )
    return out


def first_candidates(timeline: Timeline) -> list[Candidate]:
    """Lookup and ordinal temporal: which object appeared first (options: the first four task colours)."""
    if not timeline.episodes:
        return []
    first = timeline.episodes[0]
    reasoning = f"The first object is the {first.colour} object at {seconds(first.start_s)}. So the answer is {first.colour}."
    return [
        _ordinal_colour_candidate(
            timeline,
            "temporal",
            "Which object appeared first?",
            first.colour,
            reasoning,
            ("temporal", "first"),
        )
    ]


def heading_candidates(timeline: Timeline) -> list[Candidate]:
    """Lookup goal: where a once-moving object is heading, with a shorter chain of thought."""
    out = []
    for c in goal_candidates(timeline):
        e = next(e for e in timeline.episodes_of(c.key[1]) if e.moves)
        reasoning = (
            f"The {e.colour} object moves from the {REGIONS[e.region]} at {seconds(e.move_start_s)} "
            f"to the {c.answer} at {seconds(e.move_end_s)}. So the answer is {c.answer}."
        )
        out.append(Candidate(c.category, c.question, c.answer, c.distractors, reasoning, c.key, REGIONS))
    return out


def where_candidates(timeline: Timeline) -> list[Candidate]:
    """Lookup spatial: where an object that appears once, and does not move, appeared."""
    out = []
    for e in _once(timeline):
        if e.moves:
            continue
        where = REGIONS[e.region]
        out.append(
            _region_candidate(
                "spatial",
                f"Where did the {e.colour} object appear?",
                where,
                f"The {e.colour} object appears in the {where} at {seconds(e.start_s)}. So the answer is {where}.",
                ("spatial", e.colour),
            )
        )
    return out


def count_candidates(timeline: Timeline) -> list[Candidate]:
    """Lookup plot: how many times an object appeared in the whole video (0 for a task colour not shown)."""
    out = []
    for colour in timeline.config.colours:
        starts = [e.start_s for e in timeline.episodes_of(colour)]
        if starts:
            times = [seconds(s) for s in starts]
            listed = times[0] if len(times) == 1 else ", ".join(times[:-1]) + " and " + times[-1]
            fact = f"The {colour} object appears at {listed}."
        else:
            end = seconds(timeline.duration_s)
            fact = f"The {colour} object does not appear from {seconds(0.0)} to {end}."
        out.append(
            Candidate(
                "plot",
                f"How many times did the {colour} object appear?",
                str(len(starts)),
                (),
                f"{fact} So the answer is {len(starts)}.",
                ("plot", colour),
            )
        )
    return out


def first_where_candidates(timeline: Timeline) -> list[Candidate]:
    """Ordinal spatial: where the first object appeared."""
    if not timeline.episodes:
        return []
    e = timeline.episodes[0]
    where = REGIONS[e.region]
    reasoning = (
        f"The first object is the {e.colour} object. It appears in the {where} at {seconds(e.start_s)}. "
        f"So the answer is {where}."
    )
    return [
        _region_candidate(
            "spatial", "Where did the first object appear?", where, reasoning, ("spatial", "first")
        )
    ]


def last_candidates(timeline: Timeline) -> list[Candidate]:
    """Ordinal plot: which object appeared last (the latest appearance, the end of the video's story)."""
    if not timeline.episodes:
        return []
    last = timeline.episodes[-1]
    reasoning = (
        f"The last object to appear is the {last.colour} object at {seconds(last.start_s)}. "
        f"So the answer is {last.colour}."
    )
    return [
        _ordinal_colour_candidate(
            timeline, "plot", "Which object appeared last?", last.colour, reasoning, ("plot", "last")
        )
    ]


def last_heading_candidates(timeline: Timeline) -> list[Candidate]:
    """Ordinal goal: where the last object to appear is heading (only when that appearance moves)."""
    if not timeline.episodes or not timeline.episodes[-1].moves:
        return []
    e = timeline.episodes[-1]
    dest = REGIONS[e.to_region]
    reasoning = (
        f"The last object to appear is the {e.colour} object at {seconds(e.start_s)}. "
        f"It moves from the {REGIONS[e.region]} at {seconds(e.move_start_s)} to the {dest} at "
        f"{seconds(e.move_end_s)}. So the answer is {dest}."
    )
    return [_region_candidate("goal", "Where is the last object heading?", dest, reasoning, ("goal", "last"))]


_BUILDERS = {
    "multihop": {
        "temporal": temporal_candidates,
        "goal": goal_candidates,
        "spatial": spatial_candidates,
        "plot": plot_candidates,
    },
    "lookup": {
        "temporal": first_candidates,
        "goal": heading_candidates,
        "spatial": where_candidates,
        "plot": count_candidates,
    },
    "ordinal": {
        "temporal": first_candidates,
        "goal": last_heading_candidates,
        "spatial": first_where_candidates,
        "plot": last_candidates,
    },
}


def candidates(timeline: Timeline, category: str) -> list[Candidate]:
    """Every question of `category` (one of CATEGORIES) that `timeline` supports, in a fixed order."""
    return _BUILDERS[timeline.config.questions][category](timeline)


def with_options(
    candidate: Candidate, answer_slot: int, rng: np.random.Generator, canonical: bool = False
) -> Question:
    """Four distinct options: the answer at `answer_slot`, distractors drawn from the candidate's pool.

    Colours seen in the video are preferred as distractors (an unseen colour would be an easy give-away).
    For counts, three of the neighbouring values are drawn at random so the answer's place in the number
    range does not give it away.
    canonical: options in a fixed order instead, ignoring `answer_slot`, so an answer always has the same
    letter: counts are the four values from max(0, answer - 3) up, regions are REGIONS, colours the first four
    of the candidate's canonical order (the answer swapped in for the last one if it is not among them).
    """
    if canonical:
        return _canonical_question(candidate)
    if candidate.category == "plot":
        wrong = _count_distractors(int(candidate.answer), rng)
    else:
        wrong = []
        for group in candidate.distractors:
            wrong.extend(group[i] for i in rng.permutation(len(group)).tolist())
    wrong = wrong[: NUM_OPTIONS - 1]
    if len(wrong) < NUM_OPTIONS - 1:
        raise ValueError(f"too few distractors for {candidate.question!r}: {wrong}")
    options = wrong[:answer_slot] + [candidate.answer] + wrong[answer_slot:]
    assert len(set(options)) == NUM_OPTIONS, options
    return Question(candidate.category, candidate.question, tuple(options), answer_slot, candidate.reasoning)


def _count_distractors(count: int, rng: np.random.Generator) -> list[str]:
    """Three other counts from a window of four consecutive values (>= 0) that holds `count`, shuffled."""
    low = max(0, count - int(rng.integers(0, NUM_OPTIONS)))
    values = [n for n in range(low, low + NUM_OPTIONS) if n != count]
    return [str(values[i]) for i in rng.permutation(len(values)).tolist()]


def _canonical_question(candidate: Candidate) -> Question:
    """The candidate with options in their fixed order (see `with_options`)."""
    if candidate.category == "plot" and not candidate.canonical:
        low = max(0, int(candidate.answer) - (NUM_OPTIONS - 1))
        options = [str(n) for n in range(low, low + NUM_OPTIONS)]
    else:
        if not candidate.canonical:
            raise ValueError(f"no canonical option order for {candidate.question!r}")
        options = list(candidate.canonical[:NUM_OPTIONS])
        if candidate.answer not in options:
            options = [
                o for o in candidate.canonical if o in options[: NUM_OPTIONS - 1] or o == candidate.answer
            ]
    assert len(set(options)) == NUM_OPTIONS and candidate.answer in options, options
    return Question(
        candidate.category,
        candidate.question,
        tuple(options),
        options.index(candidate.answer),
        candidate.reasoning,
    )
