"""GRPO / CoT-SFT training. The RL math lives in small pure modules (no I/O, no distributed calls, no model):

- `longrl.rl.advantages`: group-relative advantage estimators (GRPO, Dr.GRPO, RLOO) by name, and the
  zero-variance group mask used by dynamic sampling.
- `longrl.rl.losses`: clipped surrogate policy loss (clip-higher, dual clip, truncated importance sampling),
  KL-to-reference estimators (k1, k2, k3) by name, loss aggregation modes with global normalization.
- `longrl.rl.answer_parsing`: response format check and answer extraction/matching (shared with eval).
- `longrl.rl.rewards`: format / accuracy / custom rewards and their weighted total for a batch.

The trainer loop composes these; nothing is imported here so that `import longrl.rl` stays cheap.
"""
