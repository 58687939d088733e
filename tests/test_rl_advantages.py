"""Advantage estimators vs hand-computed values (written out below) and vs plain torch math.

Convention under test: GRPO divides by the SAMPLE std (n - 1, as torch.std) plus eps; groups of one sample
get advantage 0 for every estimator. Tolerance: 1e-6 absolute (float32 results of float64 math).
"""

from __future__ import annotations

import math

import pytest
import torch

from longrl.errors import ConfigError
from longrl.rl.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    dr_grpo_advantages,
    get_advantage_estimator,
    grpo_advantages,
    rloo_advantages,
    zero_variance_mask,
)

ATOL = 1e-6


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=ATOL, rtol=0)


def test_grpo_hand_values_one_group():
    # [1, 0, 0, 1]: mean 0.5, sample std sqrt((4 * 0.25) / 3) = 0.5773503; 0.5 / (0.5773503 + 1e-6) = 0.8660239
    adv = grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=1e-6)
    close(adv, [[0.8660239, -0.8660239, -0.8660239, 0.8660239]])
    assert abs(0.5 / (math.sqrt(1 / 3) + 1e-6) - 0.8660239) < 1e-7  # the literal above, recomputed


# Ragged groups, interleaved on purpose: group 7 = [1, 0] (samples 0, 3), group 3 = [0.5, 2, 1] (1, 2, 5),
# group 9 = [3] alone (sample 4). Group 3: mean 7/6, deviations -2/3, 5/6, -1/6, sample var 7/12.
REWARDS = [1.0, 0.5, 2.0, 0.0, 3.0, 1.0]
IDS = [7, 3, 3, 7, 9, 3]
HAND = {
    # group 7: +-0.5 / sqrt(0.5); group 3: deviations / sqrt(7/12) = 0.7637626; group 9: 0 (alone).
    "grpo": [0.7071068, -0.8728716, 1.0910895, -0.7071068, 0.0, -0.2182179],
    # r - mean.
    "dr_grpo": [0.5, -2 / 3, 5 / 6, -0.5, 0.0, -1 / 6],
    # r_i - mean of the others: 1 - 0, 0.5 - (2 + 1) / 2, 2 - (0.5 + 1) / 2, 0 - 1, alone, 1 - (0.5 + 2) / 2.
    "rloo": [1.0, -1.0, 1.25, -1.0, 0.0, -0.25],
}


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_hand_values_ragged_groups(name):
    adv = compute_advantages(name, torch.tensor(REWARDS), torch.tensor(IDS), eps=0.0)
    close(adv, HAND[name])
    # Any hashable labels work as group ids (prompt uids), in any order.
    labels = ["cat" if i == 7 else "dog" if i == 3 else "emu" for i in IDS]
    close(compute_advantages(name, torch.tensor(REWARDS), labels, eps=0.0), HAND[name])


def test_eps_is_added_to_std():
    # One group [0, 2]: mean 1, sample std sqrt(2); with eps = 0.5: 1 / (1.4142136 + 0.5) = 0.5224077.
    close(grpo_advantages(torch.tensor([[0.0, 2.0]]), eps=0.5), [[-0.5224077, 0.5224077]])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_equal_rewards_give_zero(name):
    adv = ADVANTAGE_ESTIMATORS[name](torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(adv, torch.zeros(2, 3))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_matches_torch_reference_and_flat_form(name):
    torch.manual_seed(0)
    rewards = torch.rand(5, 8)
    mean = rewards.mean(1, keepdim=True)
    reference = {
        "grpo": (rewards - mean) / (rewards.std(1, keepdim=True) + 1e-6),  # torch.std: sample std
        "dr_grpo": rewards - mean,
        "rloo": rewards - (rewards.sum(1, keepdim=True) - rewards) / 7,
    }[name]
    adv = compute_advantages(name, rewards)
    torch.testing.assert_close(adv, reference, atol=1e-5, rtol=1e-5)
    # The flat form with group ids gives the same numbers, in the same order, after shuffling samples.
    perm = torch.randperm(40)
    ids = torch.arange(5).repeat_interleave(8)
    flat = compute_advantages(name, rewards.reshape(-1)[perm], ids[perm])
    torch.testing.assert_close(flat, adv.reshape(-1)[perm])


def test_zero_variance_mask():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert zero_variance_mask(rewards).tolist() == [[True] * 3, [False] * 3, [True] * 3]
    # Flat form: group 7 varies, group 3 all 2.0, group 9 alone (nothing to compare): drop 3 and 9.
    mask = zero_variance_mask(torch.tensor([1.0, 2.0, 2.0, 0.0, 3.0, 2.0]), torch.tensor(IDS))
    assert mask.tolist() == [False, True, True, False, True, True]
    close_rewards = torch.tensor([[0.5, 0.5 + 1e-9]], dtype=torch.float64)
    assert not zero_variance_mask(close_rewards).any()
    assert zero_variance_mask(close_rewards, atol=1e-6).all()


def test_dtypes_and_devices_kept():
    adv = grpo_advantages(torch.tensor([[1, 0, 0, 1]]))  # int rewards -> float32
    assert adv.dtype == torch.float32
    assert grpo_advantages(torch.tensor([[1.0, 0.0]], dtype=torch.float64)).dtype == torch.float64
    assert rloo_advantages(torch.tensor([[True, False]])).tolist() == [[1.0, -1.0]]
    assert dr_grpo_advantages(torch.zeros(0, 4)).shape == (0, 4)


def test_registry_and_errors():
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo"}
    assert get_advantage_estimator("rloo") is rloo_advantages
    with pytest.raises(ConfigError, match="grpo, dr_grpo, rloo"):
        get_advantage_estimator("ppo")
    with pytest.raises(ValueError, match="need group_ids"):
        grpo_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match="differs"):
        grpo_advantages(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 2), torch.zeros(2, 2))
