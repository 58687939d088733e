"""Trainer plumbing shared by CoT-SFT (`longrl.sft`) and GRPO (`longrl.rl`).

- `config_io`: dataclass configs from YAML + dotted overrides, validated; saved back as YAML.
- `optim`: AdamW with decay-free biases/norms, warmup + cosine/linear/constant schedule, gradient clipping.
- `lora`: LoRA adapters on the language model's linear layers (merge for export, disable for the reference).
- `checkpoint`: atomic checkpoints (model, optimizer, scheduler, per-rank RNG, trainer state) and resume.
- `metrics`: metrics.jsonl, optional TensorBoard, console rows, section timers, progress bar.
- `plot`: reward curves of a run as a PNG.

Nothing is imported here so that `import longrl.train` stays cheap; import the submodules.
"""
