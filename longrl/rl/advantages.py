"""Group-relative advantage estimators: each sample's reward compared with the other samples of its prompt.

Rewards come either as a flat tensor [N] with one group id per sample (groups may differ in size), or as a
[num_groups, G] tensor (one row per prompt). The advantage has the rewards' shape; it is one number per
response, broadcast over its tokens by the loss.

Conventions (shared by every estimator, chosen so that the three agree on edge cases):
- std is the SAMPLE standard deviation (Bessel's correction, divide by n - 1), as `torch.std` and verl.
- A group of one sample has no baseline to compare with: its advantage is 0 for every estimator (verl instead
  uses mean 0 / std 1 there, i.e. the raw reward; we prefer "no comparison, no signal").
- A group whose rewards are all equal gets advantage 0 (GRPO: 0 / (0 + eps)). `zero_variance_mask` finds such
  groups so that dynamic sampling (DAPO) can drop them and refill the batch.
Internally the statistics are computed in float64; the result has the rewards' float dtype (float32 for
integer or bool rewards).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from longrl.errors import ConfigError

GroupIds = torch.Tensor | Sequence[Hashable]


def _flatten_groups(
    rewards: torch.Tensor, group_ids: GroupIds | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(rewards as float64 [N], group index in 0..num_groups-1 per sample [N], num_groups)."""
    if group_ids is None:
        if rewards.dim() != 2:
            raise ValueError(
                f"rewards of shape {tuple(rewards.shape)} need group_ids; pass rewards [N] with group_ids [N] "
                "or rewards [num_groups, G]"
            )
        num_groups, size = rewards.shape
        index = torch.arange(num_groups, device=rewards.device).repeat_interleave(size)
        return rewards.reshape(-1).to(torch.float64), index, num_groups
    if rewards.dim() != 1:
        raise ValueError(f"with group_ids, rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if isinstance(group_ids, torch.Tensor):
        ids = group_ids.to(rewards.device)
    else:
        # Any hashable labels (prompt uids, strings): number them in order of first appearance.
        numbering: dict[Hashable, int] = {}
        ids = torch.tensor(
            [numbering.setdefault(g, len(numbering)) for g in group_ids], device=rewards.device
        )
    if ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids shape {tuple(ids.shape)} differs from rewards shape {tuple(rewards.shape)}"
        )
    uniq, index = torch.unique(ids, return_inverse=True)
    return rewards.to(torch.float64), index, int(uniq.numel())


def _group_sum(values: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def _centered(
    rewards: torch.Tensor, group_ids: GroupIds | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r - group mean, group size, group variance (n - 1)), each float64 [N] (per sample)."""
    flat, index, num_groups = _flatten_groups(rewards, group_ids)
    count = _group_sum(torch.ones_like(flat), index, num_groups)[index]
    centered = flat - (_group_sum(flat, index, num_groups)[index] / count)
    var = _group_sum(centered.square(), index, num_groups)[index] / (count - 1).clamp_min(1)
    return centered, count, var


def _finish(values: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    return values.reshape(rewards.shape).to(dtype)


def grpo_advantages(
    rewards: torch.Tensor, group_ids: GroupIds | None = None, *, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO: A_i = (r_i - mean_g) / (std_g + eps), std_g the sample std (n - 1) of sample i's group g.

    rewards: [N] float with group_ids [N] (tensor of ints or a sequence of hashable labels), or
    [num_groups, G] with group_ids None. Returns the advantages, shaped like rewards.
    Groups of one sample get 0.
    """
    centered, count, var = _centered(rewards, group_ids)
    adv = centered / (var.sqrt() + eps)
    return _finish(torch.where(count > 1, adv, torch.zeros_like(adv)), rewards)


def dr_grpo_advantages(
    rewards: torch.Tensor, group_ids: GroupIds | None = None, *, eps: float = 1e-6
) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean_g, no std division.

    Shapes as `grpo_advantages`; eps is accepted for a uniform signature and unused.
    """
    centered, _, _ = _centered(rewards, group_ids)
    return _finish(centered, rewards)


def rloo_advantages(
    rewards: torch.Tensor, group_ids: GroupIds | None = None, *, eps: float = 1e-6
) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j (leave-one-out baseline in the group).

    Equals n / (n - 1) * (r_i - mean_g) for a group of n samples. Shapes as `grpo_advantages`; eps is unused.
    Groups of one sample get 0.
    """
    centered, count, _ = _centered(rewards, group_ids)
    adv = centered * count / (count - 1).clamp_min(1)
    return _finish(torch.where(count > 1, adv, torch.zeros_like(adv)), rewards)


AdvantageEstimator = Callable[..., torch.Tensor]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered under `name`; ConfigError naming the choices when there is none."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown advantage estimator {name!r}; choose one of {', '.join(ADVANTAGE_ESTIMATORS)}"
        ) from None


def compute_advantages(
    name: str, rewards: torch.Tensor, group_ids: GroupIds | None = None, *, eps: float = 1e-6
) -> torch.Tensor:
    """Advantages by estimator name ("grpo", "dr_grpo", "rloo"); shapes as `grpo_advantages`."""
    return get_advantage_estimator(name)(rewards, group_ids, eps=eps)


def zero_variance_mask(
    rewards: torch.Tensor, group_ids: GroupIds | None = None, *, atol: float = 0.0
) -> torch.Tensor:
    """bool, shaped like rewards: True for every sample whose group's rewards all lie within `atol`.

    These groups (all right, all wrong, or a single sample) give zero advantage and no policy gradient;
    dynamic sampling drops them (`rewards[~mask]`) and refills the batch with fresh prompts.
    """
    flat, index, num_groups = _flatten_groups(rewards, group_ids)
    init_hi = torch.full((num_groups,), -torch.inf, dtype=flat.dtype, device=flat.device)
    init_lo = torch.full((num_groups,), torch.inf, dtype=flat.dtype, device=flat.device)
    hi = init_hi.scatter_reduce(0, index, flat, reduce="amax")
    lo = init_lo.scatter_reduce(0, index, flat, reduce="amin")
    return ((hi - lo) <= atol)[index].reshape(rewards.shape)
