"""Evaluation (`longrl eval`): benchmark loaders, subtitles, scoring with the RL reward's parser, reports.

Modules: `items` (EvalItem), `loaders` (one per --benchmark), `subtitles` (.srt for the sampled frames),
`scoring` (correctness, Wilson intervals, pass@k, breakdowns), `predictions` (the resumable
predictions.jsonl), `report` (markdown table, plot), `judge` (optional LLM judge for open-ended answers),
`runner` (run_eval: model + rollout engine + all of the above, single process or under torchrun).
"""

from longrl.eval.items import EvalItem
from longrl.eval.loaders import BENCHMARKS, load_benchmark
from longrl.eval.runner import EvalConfig, run_eval

__all__ = ["BENCHMARKS", "EvalConfig", "EvalItem", "load_benchmark", "run_eval"]
