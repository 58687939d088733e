"""A procedural long-video task with known answers: coloured objects appear, move and disappear over time.

    from longrl.data.synthetic import generate_synthetic
    result = generate_synthetic("demo_data/", num_videos=200, questions_per_video=4, seed=0)
    result.rows_path   # demo_data/synthetic.jsonl, released LongVideo-Reason schema; videos under demo_data/

Modules: `timeline` (seeded events per video and the task knobs), `render` (frames and .mp4), `questions`
(the four categories, options, chain of thought), `generate` (the output folder, resumable).
"""

from longrl.data.synthetic.generate import (
    SyntheticResult,
    answer_slot,
    check_categories,
    generate_synthetic,
    questions_for,
    task_config,
    timeline_for,
)
from longrl.data.synthetic.questions import CATEGORIES, Candidate, Question, candidates, with_options
from longrl.data.synthetic.render import pick_codec, render_frames, write_mp4
from longrl.data.synthetic.timeline import (
    BACKGROUND,
    DEFAULT_COLOURS,
    LOOKUP_COLOURS,
    PALETTE,
    QUESTION_STYLES,
    REGION_TINTS,
    REGIONS,
    Episode,
    TaskConfig,
    Timeline,
    sample_timeline,
)

__all__ = [
    "BACKGROUND",
    "CATEGORIES",
    "DEFAULT_COLOURS",
    "LOOKUP_COLOURS",
    "PALETTE",
    "QUESTION_STYLES",
    "REGIONS",
    "REGION_TINTS",
    "Candidate",
    "Episode",
    "Question",
    "SyntheticResult",
    "TaskConfig",
    "Timeline",
    "answer_slot",
    "candidates",
    "check_categories",
    "generate_synthetic",
    "pick_codec",
    "questions_for",
    "render_frames",
    "sample_timeline",
    "task_config",
    "timeline_for",
    "with_options",
    "write_mp4",
]
