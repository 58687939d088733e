"""CoT-SFT: teach the model the `<think>...</think><answer>...</answer>` format on reasoning data.

`run_sft(cfg)` (trainer.py) is what `longrl train sft` calls; batch.py builds the response-only batches.
Nothing is imported here so that `import longrl.sft` stays cheap.
"""
