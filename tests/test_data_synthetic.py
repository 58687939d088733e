"""The synthetic long-video task: every answer is checked against what the decoded video shows.

References: an independent reader of decoded frames (which palette colour covers which pixels -> object
centroids -> appearances, regions, moves) recomputes each question's answer from the question text alone,
at full frame rate and at the 32 / 16 uniformly sampled frames a model sees; the timeline rules are checked
with interval arithmetic written here; schema by `load_examples`; determinism by byte equality.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from longrl.data import load_examples
from longrl.data.schema import LETTERS
from longrl.data.synthetic import (
    CATEGORIES,
    PALETTE,
    REGIONS,
    Episode,
    TaskConfig,
    Timeline,
    answer_slot,
    candidates,
    generate_synthetic,
    questions_for,
    render_frames,
    sample_timeline,
    timeline_for,
    with_options,
)
from longrl.errors import ConfigError, DataError
from longrl.video import SamplingConfig, load_video
from longrl.video.qwen_layout import target_size

# ---------------------------------------------------------------------------------------------------------
# An independent reader of frames


def detect(frames: np.ndarray, colours: tuple[str, ...], side: int) -> list[dict[str, tuple[float, float]]]:
    """Per frame, {colour: (centroid y, centroid x)} of every object visible in it.

    A pixel belongs to a colour when each channel is within 48 of the palette value (the encoder moves flat
    colours by a few levels and blurs chroma at edges); an object is visible when at least half of its
    square's pixels match.
    """
    frames = frames.astype(np.int16)
    ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
    out: list[dict] = [{} for _ in frames]
    for colour in colours:
        mask = (np.abs(frames - np.array(PALETTE[colour])) <= 48).all(axis=-1)  # [T, H, W]
        count = mask.sum(axis=(1, 2))
        for k in np.nonzero(count >= side * side // 2)[0]:
            out[k][colour] = ((ys * mask[k]).sum() / count[k], (xs * mask[k]).sum() / count[k])
    return out


def region_of(centre: tuple[float, float], size: int) -> int:
    return 2 * int(centre[0] >= size / 2) + int(centre[1] >= size / 2)


def at_rest(centre: tuple[float, float], size: int) -> bool:
    """Whether the centroid sits at a region's centre (within 1.5 px): the object is not between regions."""
    quarter = size / 4
    return all(min(abs(v - quarter), abs(v - 3 * quarter)) <= 1.5 for v in centre)


def appearances(seen: list[dict]) -> list[tuple[int, str]]:
    """(frame, colour) for each frame in which a colour is visible and was not in the frame before."""
    out = []
    for k, now in enumerate(seen):
        before = seen[k - 1] if k else {}
        out.extend((k, c) for c in now if c not in before)
    return out


def answer_from_frames(question: str, seen: list[dict], size: int) -> str:
    """The answer text recomputed from detections and the question text (templates parsed here)."""
    events = appearances(seen)
    assert len({k for k, _ in events}) == len(events), "two objects appear in the same sampled frame"

    def appear_frame(colour: str) -> int:
        frames = [k for k, c in events if c == colour]
        assert len(frames) == 1, f"the reference object {colour} appears {len(frames)} times"
        return frames[0]

    if question == "Which object appeared first?":
        return events[0][1]
    if question == "Which object appeared last?":
        return events[-1][1]
    if question == "Where did the first object appear?":
        frame, colour = events[0]
        centre = seen[frame][colour]
        assert at_rest(centre, size), f"{colour} is between regions when it appears"
        return REGIONS[region_of(centre, size)]
    if question == "Where is the last object heading?":
        frame, colour = events[-1]
        run = []  # its centroid in each frame from its appearance until it is gone
        for now in seen[frame:]:
            if colour not in now:
                break
            run.append(now[colour])
        assert len({region_of(c, size) for c in run if at_rest(c, size)}) == 2, f"{colour} does not move"
        assert at_rest(run[0], size) and at_rest(run[-1], size)
        return REGIONS[region_of(run[-1], size)]
    if m := re.fullmatch(r"Where did the (\w+) object appear\?", question):
        centre = seen[appear_frame(m[1])][m[1]]
        assert at_rest(centre, size), f"{m[1]} is between regions when it appears"
        return REGIONS[region_of(centre, size)]
    if m := re.fullmatch(r"How many times did the (\w+) object appear\?", question):
        return str(sum(c == m[1] for _, c in events))
    if m := re.fullmatch(r"Which object appeared right after the (\w+) object appeared\?", question):
        k = appear_frame(m[1])
        return next(c for f, c in events if f > k)
    if m := re.fullmatch(r"Where was the (\w+) object when the (\w+) object appeared\?", question):
        centre = seen[appear_frame(m[2])][m[1]]
        assert at_rest(centre, size), f"{m[1]} is between regions when {m[2]} appears"
        return REGIONS[region_of(centre, size)]
    if m := re.fullmatch(
        r"How many times did the (\w+) object appear before the (\w+) object appeared\?", question
    ):
        k = appear_frame(m[2])
        return str(sum(c == m[1] and f < k for f, c in events))
    if m := re.fullmatch(r"Where is the moving (\w+) object heading\?", question):
        colour = m[1]
        # Runs of consecutive frames showing the colour; exactly one of them changes region.
        runs, current = [], []
        for now in seen:
            if colour in now:
                current.append(now[colour])
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        moving = [r for r in runs if len({region_of(c, size) for c in r if at_rest(c, size)}) > 1]
        assert len(moving) == 1, f"{colour} moves in {len(moving)} of its appearances"
        start, end = moving[0][0], moving[0][-1]
        assert at_rest(start, size) and at_rest(end, size)
        return REGIONS[region_of(end, size)]
    raise AssertionError(f"question matches no template: {question!r}")


def split_problem(problem: str) -> tuple[str, list[str]]:
    lines = problem.split("\n")
    options = [line[3:] for line in lines[1:]]
    assert [line[:3] for line in lines[1:]] == ["A. ", "B. ", "C. ", "D. "]
    return lines[0], options


# ---------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    """8 videos x 4 questions at the default format (256 frames, 8 fps, 56x56, lookup questions)."""
    return generate_synthetic(tmp_path_factory.mktemp("syn"), num_videos=8, questions_per_video=4, seed=3)


@pytest.fixture(scope="module")
def small_ordinal(tmp_path_factory: pytest.TempPathFactory):
    """8 videos x 4 ordinal questions (about the first and the last object; what `longrl demo` asks)."""
    return generate_synthetic(
        tmp_path_factory.mktemp("syn_ord"), num_videos=8, questions_per_video=4, seed=3, questions="ordinal"
    )


@pytest.fixture(scope="module")
def small_multihop(tmp_path_factory: pytest.TempPathFactory):
    """8 videos x 4 multihop questions, answers at dealt slots (the harder task)."""
    return generate_synthetic(
        tmp_path_factory.mktemp("syn_mh"),
        num_videos=8,
        questions_per_video=4,
        seed=3,
        questions="multihop",
        canonical_options=False,
    )


def _video_index(row: dict) -> int:
    return int(re.match(r"s\d+-(\d+)-q\d+", row["problem_id"])[1])


# ---------------------------------------------------------------------------------------------------------
# Answers against the decoded video


@pytest.mark.parametrize("style", ["lookup", "multihop", "ordinal"])
@pytest.mark.parametrize("num_sampled", [256, 32, 16])
def test_answers_match_decoded_frames(request, style: str, num_sampled: int) -> None:
    """Every answer, recomputed from decoded frames (all, or as a model samples them), is the marked option."""
    fixture = {"lookup": "small", "multihop": "small_multihop", "ordinal": "small_ordinal"}[style]
    small = request.getfixturevalue(fixture)
    config = small.timelines[0].config
    assert config.questions == style
    by_video: dict[int, list[dict]] = {}
    for row in small.rows:
        by_video.setdefault(_video_index(row), []).append(row)
    checked = Counter()
    for index, rows in by_video.items():
        video = load_video(
            small.out_dir / rows[0]["videos"], SamplingConfig(num_frames=num_sampled), isolate=False
        )
        assert video.frames.shape == (num_sampled, config.size, config.size, 3)
        seen = detect(video.frames, config.colours, config.object_side)
        # Only the video's own colours are ever visible.
        assert set().union(*seen) <= set(small.timelines[index].colours)
        for row in rows:
            question, options = split_problem(row["problem"])
            letter = re.fullmatch(r"<answer>([A-D])</answer>", row["answer"])[1]
            expected = answer_from_frames(question, seen, config.size)
            assert options[LETTERS.index(letter)] == expected, (row["problem_id"], num_sampled)
            assert row["reasoning"].endswith(f"So the answer is {expected}.")
            checked[row["problem_type"]] += 1
    assert checked == Counter(small.counts) and checked.total() == 32
    assert min(checked.values()) >= 6  # a video that cannot ask its category's question asks another


def test_rendered_frames_follow_the_timeline(small) -> None:
    """Raw frames (before encoding) show each object exactly in its region at its times; decoded ≈ rendered."""
    timeline = small.timelines[0]
    config = timeline.config
    frames = render_frames(timeline)
    assert frames.shape == (256, 56, 56, 3) and frames.dtype == np.uint8
    seen = detect(frames, config.colours, config.object_side)
    for k, now in enumerate(seen):
        t = k / config.fps
        visible = {e.colour: e for e in timeline.episodes if e.start_s <= t < e.end_s}
        assert set(now) == set(visible), t
        for colour, e in visible.items():
            if not e.moves or t < e.move_start_s or t >= e.move_end_s:
                region = e.region if not e.moves or t < e.move_start_s else e.to_region
                assert at_rest(now[colour], 56) and region_of(now[colour], 56) == region, (t, colour)
    decoded = load_video(small.videos[0], SamplingConfig(num_frames=256), isolate=False).frames
    diff = np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).max(axis=-1)
    # Near-lossless: flat areas (pixels whose 5x5 neighbourhood is one colour) keep their colour within a
    # few levels; only chroma next to an edge (4:2:0 subsampling) moves more.
    padded = np.pad(frames, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    flat = np.ones(frames.shape[:3], dtype=bool)
    for dy in range(5):
        for dx in range(5):
            flat &= (padded[:, dy : dy + 56, dx : dx + 56] == frames).all(axis=-1)
    assert flat.mean() > 0.6 and diff[flat].max() <= 8 and diff.max() <= 64


def test_frames_fit_the_tiny_model_token_grid() -> None:
    """56x56 frames are not resized by the tiny model's processor: 2x2 merged tokens, one per region."""
    from longrl.models.tiny import TINY_PROCESSOR

    video = TINY_PROCESSOR.video
    for n in (32, 64):
        assert target_size(n, 56, 56, video) == (56, 56)
    merged = video.patch_size * video.merge_size
    assert merged == 28  # one merged token = one region of a 56x56 frame


def test_hand_built_timeline_questions() -> None:
    """Every candidate multihop question of a hand-built timeline, with answers worked out by hand."""
    e = Episode
    timeline = Timeline(
        index=0,
        seed=0,
        config=TaskConfig(questions="multihop"),
        colours=("blue", "green", "red", "yellow"),
        episodes=(
            e("red", 2.0, 8.0, 0),
            e("green", 5.0, 16.0, 1, move_start_s=8.0, move_end_s=10.0, to_region=3),
            e("blue", 9.0, 14.0, 2),
            e("red", 12.0, 20.0, 0),
            e("yellow", 17.0, 25.0, 1),
        ),
    )
    got = {cat: {c.question: c.answer for c in candidates(timeline, cat)} for cat in CATEGORIES}
    assert got["temporal"] == {
        "Which object appeared right after the green object appeared?": "blue",
        "Which object appeared right after the blue object appeared?": "red",
    }  # yellow is last; red appears twice, so it is never the reference moment
    assert got["goal"] == {"Where is the moving green object heading?": "bottom-right"}
    # When blue appears (9 s) green is between regions and red has just gone: no spatial question about it.
    assert got["spatial"] == {
        "Where was the red object when the green object appeared?": "top-left",
        "Where was the red object when the yellow object appeared?": "top-left",
    }
    plot = "How many times did the {} object appear before the {} object appeared?"
    assert got["plot"] == {
        plot.format("blue", "green"): "0",
        plot.format("red", "green"): "1",
        plot.format("yellow", "green"): "0",
        plot.format("green", "blue"): "1",
        plot.format("red", "blue"): "1",
        plot.format("yellow", "blue"): "0",
        plot.format("blue", "yellow"): "1",
        plot.format("green", "yellow"): "1",
        plot.format("red", "yellow"): "2",
    }
    # Red starts to move 1 s after blue appears: too close to call its place (the model sees ~1 frame/s).
    close = Timeline(
        index=0,
        seed=0,
        config=TaskConfig(questions="multihop"),
        colours=("blue", "red"),
        episodes=(e("red", 2.0, 14.0, 0, 7.0, 9.0, 1), e("blue", 6.0, 14.0, 2)),
    )
    assert candidates(close, "spatial") == []
    (count,) = [c for c in candidates(timeline, "plot") if c.answer == "2"]
    assert count.reasoning == (
        "The yellow object appears at 17.0s. Before that, the red object appears at 2.0s and 12.0s. "
        "So the answer is 2."
    )


def test_hand_built_lookup_questions() -> None:
    """Every lookup question of a hand-built timeline, answers and canonical letters worked out by hand."""
    e = Episode
    timeline = Timeline(
        index=0,
        seed=0,
        config=TaskConfig(),  # lookup: red, green, blue, yellow; options in fixed order
        colours=("blue", "green", "red"),
        episodes=(
            e("red", 2.0, 8.0, 0),
            e("green", 5.0, 16.0, 1, move_start_s=8.0, move_end_s=10.0, to_region=3),
            e("blue", 9.0, 14.0, 2),
            e("red", 12.0, 20.0, 0),
        ),
    )
    got = {cat: {c.question: c.answer for c in candidates(timeline, cat)} for cat in CATEGORIES}
    assert got == {
        "temporal": {"Which object appeared first?": "red"},
        "goal": {"Where is the moving green object heading?": "bottom-right"},
        # red appears twice and green moves: only blue has one place where it appeared.
        "spatial": {"Where did the blue object appear?": "bottom-left"},
        "plot": {
            f"How many times did the {c} object appear?": n
            for c, n in zip(("red", "green", "blue", "yellow"), "2110", strict=True)
        },
    }
    reasoning = {c.key: c.reasoning for cat in CATEGORIES for c in candidates(timeline, cat)}
    assert (
        reasoning[("temporal", "first")]
        == "The first object is the red object at 2.0s. So the answer is red."
    )
    assert reasoning[("goal", "green")] == (
        "The green object moves from the top-right at 8.0s to the bottom-right at 10.0s. "
        "So the answer is bottom-right."
    )
    assert reasoning[("spatial", "blue")] == (
        "The blue object appears in the bottom-left at 9.0s. So the answer is bottom-left."
    )
    assert reasoning[("plot", "red")] == "The red object appears at 2.0s and 12.0s. So the answer is 2."
    assert reasoning[("plot", "yellow")] == (
        "The yellow object does not appear from 0.0s to 32.0s. So the answer is 0."
    )
    rng = np.random.default_rng(0)
    letters = {
        c.key: LETTERS[with_options(c, 3, rng, canonical=True).answer_index]
        for cat in CATEGORIES
        for c in candidates(timeline, cat)
    }  # slot 3 (D) is ignored: the letter follows from the answer text
    assert letters == {
        ("temporal", "first"): "A",
        ("goal", "green"): "D",
        ("spatial", "blue"): "C",
        ("plot", "red"): "C",
        ("plot", "green"): "B",
        ("plot", "blue"): "B",
        ("plot", "yellow"): "A",
    }


def test_hand_built_ordinal_questions() -> None:
    """Every ordinal question of a hand-built timeline, with its chain of thought and canonical letter."""
    e = Episode
    config = TaskConfig(questions="ordinal")
    still_last = Timeline(
        index=0,
        seed=0,
        config=config,
        colours=("blue", "green", "red"),
        episodes=(e("red", 2.0, 8.0, 1), e("green", 5.0, 12.0, 3), e("blue", 9.0, 14.0, 2)),
    )
    got = {cat: [(c.question, c.answer) for c in candidates(still_last, cat)] for cat in CATEGORIES}
    assert got == {
        "temporal": [("Which object appeared first?", "red")],
        "goal": [],  # the last object (blue) does not move: nothing to head to
        "spatial": [("Where did the first object appear?", "top-right")],
        "plot": [("Which object appeared last?", "blue")],
    }
    moving_last = Timeline(
        index=0,
        seed=0,
        config=config,
        colours=("green", "yellow"),
        episodes=(
            e("yellow", 1.0, 7.0, 3),
            e("green", 6.0, 16.0, 0, move_start_s=9.0, move_end_s=11.0, to_region=2),
        ),
    )
    found = {c.key: c for cat in CATEGORIES for c in candidates(moving_last, cat)}
    assert {k: c.answer for k, c in found.items()} == {
        ("temporal", "first"): "yellow",
        ("goal", "last"): "bottom-left",
        ("spatial", "first"): "bottom-right",
        ("plot", "last"): "green",
    }
    assert found[("goal", "last")].reasoning == (
        "The last object to appear is the green object at 6.0s. It moves from the top-left at 9.0s to the "
        "bottom-left at 11.0s. So the answer is bottom-left."
    )
    assert found[("spatial", "first")].reasoning == (
        "The first object is the yellow object. It appears in the bottom-right at 1.0s. "
        "So the answer is bottom-right."
    )
    assert found[("plot", "last")].reasoning == (
        "The last object to appear is the green object at 6.0s. So the answer is green."
    )
    rng = np.random.default_rng(0)
    letters = {k: LETTERS[with_options(c, 0, rng, canonical=True).answer_index] for k, c in found.items()}
    assert letters == {
        ("temporal", "first"): "D",
        ("goal", "last"): "C",
        ("spatial", "first"): "D",
        ("plot", "last"): "B",
    }


# ---------------------------------------------------------------------------------------------------------
# Timeline rules


def test_timeline_rules_hold() -> None:
    """Gaps between appearances, one object per region, absences between reappearances, adjacent moves."""
    config = TaskConfig()
    for index in range(300):
        tl = sample_timeline(config, seed=1, index=index)
        starts = [e.start_s for e in tl.episodes]
        assert starts == sorted(starts) and all(
            b - a >= config.min_gap_s for a, b in zip(starts, starts[1:], strict=False)
        )
        for e in tl.episodes:
            assert 0 < e.start_s < e.end_s <= config.duration_s
            assert e.end_s - e.start_s >= config.min_visible_s or e.end_s == config.duration_s
            assert e.colour in tl.colours
            if e.moves:
                assert bin(e.region ^ e.to_region).count("1") == 1  # shares an edge
                assert e.move_start_s - e.start_s >= config.hold_s
                assert e.move_end_s - e.move_start_s == config.move_s
                assert e.end_s - e.move_end_s >= config.hold_s
        # Occupancy of each region on a 0.5 s grid (region margin included): never two objects.
        grid = np.arange(0, config.duration_s, 0.5)
        for region in range(4):
            spans = []
            for e in tl.episodes:
                if e.region == region:
                    spans.append((e.start_s, e.move_end_s if e.moves else e.end_s))
                if e.moves and e.to_region == region:
                    spans.append((e.move_start_s, e.end_s))
            m = config.region_margin_s
            busy = sum(((grid >= a - m) & (grid < b + m)).astype(int) for a, b in spans) if spans else 0
            assert np.max(busy) <= 1, (index, region)
        for colour in tl.colours:
            eps = tl.episodes_of(colour)
            assert all(
                b.start_s - a.end_s >= config.min_absence_s for a, b in zip(eps, eps[1:], strict=False)
            )


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    """Same arguments -> identical rows and identical video bytes; another seed -> other videos."""
    a = generate_synthetic(tmp_path / "a", num_videos=3, questions_per_video=2, seed=5, num_frames=64, fps=2)
    b = generate_synthetic(tmp_path / "b", num_videos=3, questions_per_video=2, seed=5, num_frames=64, fps=2)
    c = generate_synthetic(tmp_path / "c", num_videos=3, questions_per_video=2, seed=6, num_frames=64, fps=2)
    assert a.rows_path.read_bytes() == b.rows_path.read_bytes()
    assert [p.read_bytes() for p in a.videos] == [p.read_bytes() for p in b.videos]
    assert a.rows != c.rows and {p.name for p in a.videos}.isdisjoint(p.name for p in c.videos)
    for index, tl in enumerate(a.timelines):
        again = timeline_for(index, seed=5, config=tl.config, questions_per_video=2)
        assert again == tl


def test_rerun_reuses_and_never_duplicates(small, tmp_path: Path) -> None:
    out = tmp_path / "r"
    first = generate_synthetic(out, num_videos=4, questions_per_video=3, seed=3)
    stamps = {p: p.stat().st_mtime_ns for p in [first.rows_path, first.meta_path, *first.videos]}
    again = generate_synthetic(out, num_videos=4, questions_per_video=3, seed=3)
    assert (again.encoded, again.reused) == (0, 4) and (first.encoded, first.reused) == (4, 0)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    assert again.rows == first.rows
    # A killed run leaves some videos: the next run encodes only the missing ones.
    first.videos[1].unlink()
    resumed = generate_synthetic(out, num_videos=4, questions_per_video=3, seed=3)
    assert (resumed.encoded, resumed.reused) == (1, 3) and resumed.rows == first.rows
    # More videos: the first ones and their rows stay as they were; no row twice.
    more = generate_synthetic(out, num_videos=6, questions_per_video=3, seed=3)
    assert more.rows[: len(first.rows)] == first.rows and (more.encoded, more.reused) == (2, 4)
    lines = more.rows_path.read_text().splitlines()
    ids = [json.loads(line)["problem_id"] for line in lines]
    assert len(ids) == len(set(ids)) == 18
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(p.name for p in more.videos)


# ---------------------------------------------------------------------------------------------------------
# Options, letters, schema


def test_options_distinct_and_letters_balanced() -> None:
    """Multihop, dealt slots, over 1000 questions: distinct options, letters exactly balanced, counts spread."""
    config = TaskConfig(questions="multihop", canonical_options=False)
    letters, plot_answers, number = Counter(), Counter(), 0
    for index in range(250):
        tl = timeline_for(index, seed=0, config=config)
        qs = questions_for(tl, CATEGORIES, 4, number)
        assert [q.category for q in qs] == list(CATEGORIES)
        for q in qs:
            assert len(q.options) == 4 == len(set(q.options))
            assert q.answer_index == answer_slot(0, number)
            letters[LETTERS[q.answer_index]] += 1
            if q.category in ("goal", "spatial"):
                assert sorted(q.options) == sorted(REGIONS)
            if q.category == "temporal":
                assert set(q.options) <= set(config.colours)
                anchor = re.search(r"after the (\w+) object", q.question)[1]
                assert anchor not in q.options
            if q.category == "plot":
                plot_answers[q.answer_text] += 1
                values = sorted(int(o) for o in q.options)
                assert values == list(range(values[0], values[0] + 4))
            number += 1
    assert letters == Counter({"A": 250, "B": 250, "C": 250, "D": 250})
    assert min(plot_answers[str(n)] for n in range(3)) >= 70  # "0" is no shortcut


def test_canonical_options_fixed_order() -> None:
    """Lookup, canonical options, over 1000 questions: one fixed order per category; letters near balanced."""
    config = TaskConfig()
    fixed = {
        "temporal": ("red", "green", "blue", "yellow"),
        "goal": REGIONS,
        "spatial": REGIONS,
        "plot": ("0", "1", "2", "3"),
    }
    letters, number = {cat: Counter() for cat in CATEGORIES}, 0
    for index in range(250):
        tl = timeline_for(index, seed=0, config=config)
        qs = questions_for(tl, CATEGORIES, 4, number)
        assert len(qs) == 4
        for q in qs:
            assert q.options == fixed[q.category]
            letters[q.category][LETTERS[q.answer_index]] += 1
        number += len(qs)
    # Each category gets its turn (a video that cannot ask one asks another, rarely); plot counts are dealt
    # 0, 1, 2, 3 in turn (3 is the hardest to supply); the rest follow the random timelines.
    assert all(sum(letters[cat].values()) >= 240 for cat in CATEGORIES), letters
    for cat in CATEGORIES:
        assert min(letters[cat][x] for x in "ABCD") >= 40, (cat, letters[cat])


def test_rows_load_with_no_bad_rows(small) -> None:
    examples, report = load_examples(small.rows_path, small.out_dir, on_bad_row="fail")
    assert report.kept == report.total == 32 and not report.skipped
    assert Counter(e.category for e in examples) == Counter(small.counts)
    assert set(small.counts) == set(CATEGORIES) and min(small.counts.values()) >= 6
    for example, row in zip(examples, small.rows, strict=True):
        assert set(row) == {
            "problem_id",
            "problem",
            "data_type",
            "problem_type",
            "reasoning",
            "videos",
            "answer",
        }
        assert row["data_type"] == "video" and row["videos"].startswith("videos/")
        assert example.video.is_file() and len(example.options) == 4
        assert re.search(r"\d+\.\ds", example.reasoning)  # timestamps in the chain of thought
    meta = json.loads(small.meta_path.read_text())
    assert meta["rows"] == 32 and len(meta["timelines"]) == 8


def test_categories_filter(tmp_path: Path) -> None:
    result = generate_synthetic(
        tmp_path, num_videos=3, questions_per_video=2, categories="spatial,plot", num_frames=64, fps=2
    )
    assert result.counts == {"spatial": 3, "plot": 3}
    assert [r["problem_type"] for r in result.rows] == ["spatial", "plot"] * 3


def test_user_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="categories"):
        generate_synthetic(tmp_path, num_videos=1, categories=["temporal", "story"])
    with pytest.raises(ConfigError, match="unknown synthetic task knob"):
        generate_synthetic(tmp_path, num_videos=1, min_gap=3)
    with pytest.raises(ConfigError, match="num_videos"):
        generate_synthetic(tmp_path, num_videos=0)
    with pytest.raises(ConfigError, match="colours"):
        TaskConfig(colours=("red", "green", "blue", "pink", "white"))
    with pytest.raises(ConfigError, match="questions must be one of lookup, multihop, ordinal"):
        TaskConfig(questions="riddles")
    with pytest.raises(ConfigError, match="at least 5 for multihop"):
        TaskConfig(questions="multihop", colours=("red", "green", "blue", "yellow"))
    with pytest.raises(ConfigError, match="at least 4"):
        TaskConfig(colours=("red", "green", "blue"), objects_per_video=2)
    # Someone else's rows file in the folder is never overwritten.
    (tmp_path / "synthetic.jsonl").write_text('{"mine": 1}\n')
    with pytest.raises(DataError, match="not written by the synthetic generator"):
        generate_synthetic(tmp_path, num_videos=1)
    assert (tmp_path / "synthetic.jsonl").read_text() == '{"mine": 1}\n'


def test_timeline_json_is_complete(small) -> None:
    """The meta file's timelines equal the ones returned (what a reader of the data folder can check)."""
    meta = json.loads(small.meta_path.read_text())
    for stored, tl in zip(meta["timelines"], small.timelines, strict=True):
        assert isinstance(tl, Timeline)
        assert {k: v for k, v in stored.items() if k != "video"} == json.loads(json.dumps(tl.to_dict()))
