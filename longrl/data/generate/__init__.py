"""`longrl generate-data`: long videos -> LongVideo-Reason-style reasoning data, in resumable stages.

    from longrl.data.generate import BackendSpec, GenerateConfig, run_pipeline
    cfg = GenerateConfig(out=Path("data/"), videos=Path("videos/"),
                         captioner=BackendSpec("openai", "Qwen2.5-VL-72B", "http://localhost:8000/v1"),
                         reasoner=BackendSpec("openai", "DeepSeek-R1", "http://localhost:8001/v1"),
                         filter_model=Path("models/base"))
    result = run_pipeline(cfg)          # data/sft.jsonl, data/rl.jsonl, data/eval.jsonl, data/manifest.json

Stages (one module each): scan -> segment -> caption -> questions -> refine -> filter -> split, or
synthetic -> filter -> split. Shared parts: `store` (crash-safe JSONL logs, atomic writes), `records` (ids,
file names, the question record), `prompts`, `validation` (the reasoner's JSON), `context` (per-run state,
the thread pool), `report` (manifest, summary table), `pipeline` (order, resume, dependencies).
"""

from longrl.data.generate.config import (
    SYNTHETIC_STAGES,
    VIDEO_STAGES,
    BackendSpec,
    GenerateConfig,
    parse_list,
)
from longrl.data.generate.pipeline import PipelineResult, run_pipeline
from longrl.data.generate.report import summary_lines, summary_table
from longrl.data.generate.validation import OUTPUT_PROBLEMS, InvalidOutput, validate_question

__all__ = [
    "OUTPUT_PROBLEMS",
    "SYNTHETIC_STAGES",
    "VIDEO_STAGES",
    "BackendSpec",
    "GenerateConfig",
    "InvalidOutput",
    "PipelineResult",
    "parse_list",
    "run_pipeline",
    "summary_lines",
    "summary_table",
    "validate_question",
]
