"""The sizes of `longrl demo`: how much data, how many steps, for the full run and for `--quick`.

The numbers were chosen on the 2-core CPU machines this project is developed on so that the full demo
finishes well inside ten minutes and `--quick` in under two (README: the measured times and accuracies for
three seeds). `--quick` only proves that every stage runs end to end. The eval split is 2000 questions, so
that a 95% interval is about +-2 points.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DemoPlan:
    """Everything the demo's stages take. Frames: sampled per video (the videos have `video_frames` frames
    at `video_fps`, so every question needs information spread over tens of seconds)."""

    name: str
    # data (three disjoint sets of videos: SFT, the RL pool, held-out eval)
    sft_videos: int
    rl_videos: int
    eval_videos: int
    questions_per_video: int = 4
    # question style of longrl.data.synthetic: "ordinal" asks about the first and the last object, which the
    # tiny model learns; "lookup" questions name an object, and it does not learn that lookup in minutes
    questions: str = "ordinal"
    video_frames: int = 256
    video_fps: int = 8
    frames: int = 32
    calibration_videos: int = 40  # SFT videos the base model's vision projector is calibrated on
    # ... and whitened with this eigenvalue floor (longrl.models.calibrate; None: centred and scaled only).
    # Without whitening, where an object is (spatial, goal) was a few percent of its tokens' variance, and
    # spatial stayed at chance in three seeds; with 0.01 the three seeds reach 61-69% on spatial (README)
    calibration_whiten: float | None = 0.01
    # CoT-SFT
    sft_steps: int = 800  # ~0.16 s a step at batch 16 on 2 idle cores; 800: 69-71% after SFT (3 seeds)
    sft_batch: int = 16
    sft_lr: float = 3e-3
    # generate-data's filter stage on the RL pool, with the SFT model
    filter_samples: int = 4
    # GRPO with MR-SP over `nproc` local processes (sp = nproc)
    rl_batch: int = 8
    rl_group: int = 8
    # lr 5e-4 without KL broke the chain of thought of a 50%-SFT model within 60 steps ("So the.0s."). With
    # lr 1e-4 and KL 0.05 GRPO raised spatial but the other categories drifted down; KL 0.2 holds them, and
    # lr 3e-4 for 200 steps (~1.2 s a step) lets spatial keep rising (README: what was tried)
    rl_steps: int = 200
    rl_lr: float = 3e-4
    rl_kl_coef: float = 0.2
    rl_temperature: float = 1.0
    rl_dynamic_sampling: bool = True  # groups whose answers are all right or all wrong teach nothing
    # PPO-ptx: the SFT rows' loss, weight 1, on rl_batch of them each step. Without it temporal (which the
    # filtered pool barely holds) and plot drifted down: GRPO broke temporal answers by naming another first
    # object in the chain of thought spatial shares; and seed 0's intervals overlapped (README: what was
    # measured on the way)
    rl_ptx_coef: float = 1.0
    max_new_tokens: int = 96  # twice the longest ordinal chain of thought (goal, ~45 tiny-tokenizer tokens)
    nproc: int = 2
    # minutes the plan is meant to take on 2 CPU cores (printed next to the measured time)
    target_minutes: float = 10.0

    @property
    def eval_questions(self) -> int:
        return self.eval_videos * self.questions_per_video


FULL = DemoPlan(name="full", sft_videos=300, rl_videos=200, eval_videos=500)
QUICK = replace(
    FULL,
    name="quick",
    sft_videos=24,
    rl_videos=8,
    eval_videos=8,
    frames=16,
    sft_steps=12,
    sft_batch=8,
    filter_samples=2,
    rl_steps=2,
    rl_batch=4,
    rl_group=4,
    # The 12-step SFT model is always wrong: dynamic sampling would drop every group, and no update (nor
    # PPO-ptx) would run. Without it the update runs on zero advantages, plus KL and PPO-ptx.
    rl_dynamic_sampling=False,
    target_minutes=2.0,
)


def plan_for(quick: bool) -> DemoPlan:
    return QUICK if quick else FULL
