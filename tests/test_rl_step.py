"""One GRPO step (longrl.rl.step.grpo_step) on the tiny Qwen2.5-VL against hand-written references.

The optimizer in most tests is `GradRecorder`: its step() stores the (synced, unclipped) gradients and leaves
the weights alone, so the gradient a step applies can be compared with one computed by hand.

Reference computation (`_hand_loss`): every sequence on its own, unpadded: the prompt through
`adapter.build_inputs` (prompt ids only), the response as token embeddings at the positions the engine
decodes them (`decode_position_ids` from the prompt's rope_deltas), `adapter.logits`, log_softmax(logits / T)
at the response tokens. Rewards recomputed from the decoded responses, GRPO advantages (r - mean) / (std + 1e-6)
by hand, loss = token mean of -A * ratio (ratio = exp(lp - lp.detach()): 1 in value, d lp in gradient)
+ kl_coef * token mean of k3 against a second, different tiny model.

Tolerances: logprobs 1e-5 (float32); gradients max|g - g_ref| <= 1e-4 * max|g_ref| per tensor (same process,
same math in another order). dp 2 and sp 2 against one process: test_rl_step_parallel.py.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch
from videos import write_video

import longrl.models as M
import longrl.rl.step as step_module
from longrl.data.schema import Example
from longrl.models.loading import load_model
from longrl.models.prompt import IGNORE_INDEX, build_sft_example
from longrl.parallel.groups import single_process_state
from longrl.rl.ptx import PtxTerm
from longrl.rl.reference import Reference
from longrl.rl.rewards import RewardConfig, compute_rewards
from longrl.rl.step import GRPOSetup, grpo_step, plan_batches
from longrl.rollout.hf import HFEngine
from longrl.rollout.prompts import VideoSource, encode_videos
from longrl.sft.batch import sft_response
from longrl.train.config import AlgoConfig, RolloutConfig
from longrl.train.data import TrainData
from longrl.video.sampling import SamplingConfig

LOGP_ATOL = 1e-5
GRAD_RTOL = 1e-4
PTX_MAX_TOKENS = 6  # shorter than the rows' SFT targets: the cut is exercised too


def letter_share(response: str, answer: str, **_) -> float:
    """Custom reward: share of the response's non-space characters that are the gold letter (any case).
    Dense (most random responses score a little, differently), so every group has reward variance."""
    text = response.replace(" ", "")
    return text.lower().count(answer.lower()) / max(len(text), 1)


def constant_for_q0(response: str, answer: str, category: str, **_) -> float:
    """Custom reward: 1.0 for every response to a question of category "flat" (a zero-variance group),
    else `letter_share`."""
    return 1.0 if category == "flat" else letter_share(response, answer)


def _reward(fn: str) -> RewardConfig:
    return RewardConfig(format_weight=0.0, accuracy_weight=0.0, custom=f"{__file__}:{fn}")


class GradRecorder(torch.optim.Optimizer):
    """An optimizer that records each step's gradients (by parameter name) and changes nothing."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        super().__init__([p for _, p in self.named], {"lr": 0.0})
        self.grads: list[dict[str, torch.Tensor]] = []

    def step(self, closure=None):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.named if p.grad is not None})


@functools.cache
def _assets(root: str) -> tuple[Path, list[Path]]:
    root = Path(root)
    videos = [write_video(root / f"v{i}.mp4", 8, 4) for i in range(2)]
    return M.make_tiny(root / "tiny"), videos


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return _assets(str(tmp_path_factory.mktemp("rl_step")))


def _examples(videos: list[Path], n: int, flat: tuple[int, ...] = ()) -> list[Example]:
    return [
        Example(
            str(i),
            f"question {i}?",
            ["red", "green", "blue"],
            "A",
            "",
            "flat" if i in flat else "plain",
            "video",
            videos[i % len(videos)],
            videos[i % len(videos)].name,
        )  # fmt: skip
        for i in range(n)
    ]


def _sft_rows(videos: list[Path], n: int) -> list[Example]:
    """PPO-ptx rows: the questions of `_examples` with a reasoning (the SFT target's <think> part) whose
    length differs from row to row."""
    rows = _examples(videos, n)
    return [
        dataclasses.replace(ex, reasoning=f"row {ex.id} shows" + " bars" * (i + 1))
        for i, ex in enumerate(rows)
    ]


def _ptx_term(rows: list[Example], coef: float, batch_size: int, dp_rank: int = 0, dp_size: int = 1,
              max_tokens: int = PTX_MAX_TOKENS):  # fmt: skip
    """A PtxTerm over `rows` in file order (dp rank r takes rows r, r + dp_size, ...)."""

    def fail(example, reason):
        raise AssertionError(f"ptx row {example.id}: {reason}")

    data = TrainData(rows, seed=0, shuffle=False, dp_rank=dp_rank, dp_size=dp_size)
    return PtxTerm(data, coef, batch_size, max_response_tokens=max_tokens, on_failed=fail)


def _setup(model_dir, *, state=None, algo=None, rollout=None, reward=None, reference=None, optimizer=None,
           micro_batch_size=None):  # fmt: skip
    loaded = load_model(model_dir)
    adapter = loaded.adapter
    adapter.set_vision_trainable(False)
    state = state or single_process_state()
    source = VideoSource(SamplingConfig(num_frames=2), loaded.video_config,
                         store=M.EmbeddingStore.for_adapter(adapter), state=state)  # fmt: skip
    return GRPOSetup(
        adapter,
        loaded.tokenizer,
        HFEngine(adapter, loaded.tokenizer),
        optimizer(adapter.model) if optimizer else GradRecorder(adapter.model),
        source,
        state,
        rollout or RolloutConfig(n=4, max_new_tokens=6, temperature=1.0, prompt_batch_size=1),
        algo or AlgoConfig(),
        reward or _reward("letter_share"),
        reference=reference(adapter) if reference else None,
        seed=7,
        max_grad_norm=None,
        micro_batch_size=micro_batch_size,
    )


# ---- the hand-written reference ---------------------------------------------------------------------------


def _sequence_logprobs(adapter, ids, prompt_len, video, temperature):
    """log_softmax(logits / T) of the response tokens of one unpadded sequence, [R] float32 (with grad)."""
    prompt = ids[None, :prompt_len]
    grid = torch.tensor([video.grid_thw])
    inputs = adapter.build_inputs(prompt, None, [video.embeds], grid, [video.second_per_grid_t])
    response = ids[None, prompt_len:]
    n = response.shape[1]
    positions = adapter.decode_position_ids(torch.ones(1, prompt_len + n), inputs.rope_deltas, n)
    embeds = torch.cat([inputs.inputs_embeds, adapter.embed_tokens(response)], dim=1)
    position_ids = torch.cat([inputs.position_ids, positions], dim=2)
    logits = adapter.logits(embeds, position_ids, None)[0, prompt_len - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, response[0, :, None])[:, 0]


def _hand_loss(setup, out, examples, kl_coef=0.0, reference=None):
    """Rewards, GRPO advantages and the token-mean loss of the step's sequences, computed one by one."""
    batch, tok, adapter = out.batch, setup.tokenizer, setup.adapter
    texts, answers, lengths = [], [], []
    for i in range(len(batch)):
        ids = batch.input_ids[i, batch.attention_mask[i].bool()]
        response = ids[batch.response_mask[i, : ids.numel()]]
        stop = response[-1].item() in setup.engine.eos_ids
        texts.append(tok.decode((response[:-1] if stop else response).tolist(), skip_special_tokens=True))
        answers.append(examples[int(batch.group_ids[i])].answer)
        lengths.append(response.numel())
    rewards = compute_rewards(texts, answers, [["red", "green", "blue"]] * len(texts), config=setup.reward)
    rewards = rewards["total"].view(-1, setup.rollout.n)
    adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).reshape(-1)
    terms, logps = [], []
    for i in range(len(batch)):
        ids = batch.input_ids[i, batch.attention_mask[i].bool()]
        prompt_len = ids.numel() - lengths[i]
        video = M.VideoEmbedding(batch.video_embeds[i], tuple(batch.video_grid_thw[i].tolist()),
                                 float(batch.second_per_grid_ts[i]))  # fmt: skip
        lp = _sequence_logprobs(adapter, ids, prompt_len, video, setup.rollout.temperature)
        logps.append(lp.detach())
        term = -adv[i] * torch.exp(lp - lp.detach())
        if reference is not None:
            with torch.no_grad():
                ref = _sequence_logprobs(reference, ids, prompt_len, video, setup.rollout.temperature)
            log_r = lp - ref
            term = term + kl_coef * (torch.exp(-log_r) - 1 + log_r)
        terms.append(term)
    loss = torch.cat(terms).sum() / sum(lengths)
    return loss, adv, logps


def _hand_ptx_loss(setup, rows):
    """Mean -log p per response token of the rows' SFT sequences (cut to PTX_MAX_TOKENS response tokens),
    each sequence unpadded through the model on its own."""
    adapter, total, count = setup.adapter, 0.0, 0
    for ex in rows:
        video = encode_videos(adapter, [ex.video], setup.source).embeddings[ex.video]
        seq = build_sft_example(setup.tokenizer, ex.question, ex.options, sft_response(ex),
                                num_video_tokens=adapter.num_video_tokens(video.grid_thw))  # fmt: skip
        end = seq.response_start + PTX_MAX_TOKENS
        ids, labels = torch.tensor(seq.input_ids[:end]), torch.tensor(seq.labels[:end])
        grid = torch.tensor([video.grid_thw])
        inputs = adapter.build_inputs(ids[None], None, [video.embeds], grid, [video.second_per_grid_t])
        logits = adapter.logits(inputs.inputs_embeds, inputs.position_ids, None)[0, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]
        scored = labels[1:] != IGNORE_INDEX
        total = total - logp[scored].sum()
        count += int(scored.sum())
    assert count == PTX_MAX_TOKENS * len(rows)
    return total / count


def _named_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _assert_grads_close(got, ref, rtol=GRAD_RTOL, what=""):
    assert got.keys() == ref.keys(), what
    bad = {}
    for name, g in ref.items():
        err, scale = (got[name] - g).abs().max().item(), g.abs().max().item()
        if err > rtol * scale or (scale == 0 and err > 0):
            bad[name] = (err, scale)
    assert not bad, f"{what}: gradients differ (max err, max |g|): {bad}"


# ---- tests ------------------------------------------------------------------------------------------------


def test_first_update_has_ratio_one_and_the_hand_written_gradient(assets):
    model_dir, videos = assets
    other = load_model(
        M.make_tiny(model_dir.parent / "other", seed=1)
    ).adapter  # a reference unlike the policy
    setup = _setup(model_dir, algo=AlgoConfig(kl_coef=0.05, kl_estimator="k3"),
                   reference=lambda _: Reference(other))  # fmt: skip
    examples = _examples(videos, 3)
    out = grpo_step(setup, examples, step=0)
    m, batch = out.metrics, out.batch
    assert len(batch) == 3 * 4 and m["groups_kept"] == 3 and m["updates"] == 1
    # One epoch, one mini-batch: the update's own logprobs, detached, are the old ones: ratio exactly 1.
    assert m["ratio_mean"] == 1.0 and m["clip_frac"] == 0.0 and m["approx_kl"] == 0.0
    assert "tis_weight_mean" not in m  # tis "auto" with the hf engine: no correction
    # The engine sampled at the trainer's positions: its logprobs agree with the trainer's old logprobs.
    mask = batch.loss_mask
    torch.testing.assert_close(batch.rollout_logprobs[mask], out.old_logprobs[mask], atol=LOGP_ATOL, rtol=0)

    loss, adv, logps = _hand_loss(setup, out, examples, kl_coef=0.05, reference=other)
    torch.testing.assert_close(batch.advantages, adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.old_logprobs[mask], torch.cat(logps), atol=LOGP_ATOL, rtol=0)
    assert m["loss"] == pytest.approx(loss.item(), abs=1e-5)
    assert m["kl"] > 0.01  # a different model: the KL term is really there
    _assert_grads_close(
        setup.optimizer.grads[0], _named_grads(setup.adapter.model, loss), what="step vs hand"
    )


def test_on_policy_update_skips_the_old_logprob_pass_and_matches_it(assets, monkeypatch):
    """One PPO epoch and one mini-batch: the update's own logprobs, detached, replace the separate old-logprob
    prefill. Forcing that prefill back gives the same rollouts, old logprobs (1e-5), loss and gradient, with
    the KL term and TIS weights in the loss."""
    model_dir, videos = assets
    examples = _examples(videos, 3)
    other = load_model(M.make_tiny(model_dir.parent / "other_kl", seed=1)).adapter  # KL in the loss
    algo = AlgoConfig(kl_coef=0.05, tis="on")  # TIS on: its weights use the old logprobs too
    fast = _setup(model_dir, algo=algo, reference=lambda _: Reference(other))
    out_fast = grpo_step(fast, examples, step=2)
    assert "time/old" not in out_fast.metrics and out_fast.metrics["ratio_mean"] == 1.0
    assert out_fast.metrics["kl"] > 0.01
    assert out_fast.metrics["tis_weight_mean"] == pytest.approx(1.0, abs=1e-4)

    monkeypatch.setattr(step_module, "_on_policy", lambda algo, plan: False)
    separate = _setup(model_dir, algo=algo, reference=lambda _: Reference(other))
    out_sep = grpo_step(separate, examples, step=2)
    assert "time/old" in out_sep.metrics
    assert torch.equal(out_fast.batch.input_ids, out_sep.batch.input_ids)
    mask = out_fast.batch.loss_mask
    torch.testing.assert_close(
        out_fast.old_logprobs[mask], out_sep.old_logprobs[mask], atol=LOGP_ATOL, rtol=0
    )
    assert out_fast.metrics["loss"] == pytest.approx(out_sep.metrics["loss"], abs=1e-6)
    _assert_grads_close(fast.optimizer.grads[0], separate.optimizer.grads[0], what="on-policy vs old pass")


def test_only_one_optimizer_step_per_batch_counts_as_on_policy():
    one = [[slice(0, 8)]]
    assert step_module._on_policy(AlgoConfig(), one) and step_module._on_policy(AlgoConfig(), [])
    assert not step_module._on_policy(AlgoConfig(ppo_epochs=2), one)  # the second epoch sees a moved policy
    assert not step_module._on_policy(AlgoConfig(), [[slice(0, 4)], [slice(4, 8)]])  # two mini-batches


def test_micro_batches_and_mini_batch_planning_give_the_whole_batch_gradient(assets):
    """Micro-batches of 5 sequences (uneven, groups cut in two) give the gradient of one forward of all 12,
    for a sequence-level aggregation (the counts are the whole mini-batch's)."""
    model_dir, videos = assets
    examples = _examples(videos, 3)
    algo = AlgoConfig(agg_mode="seq-mean-token-mean")
    whole = _setup(model_dir, algo=algo)
    split = _setup(model_dir, algo=algo, micro_batch_size=5)
    a, b = grpo_step(whole, examples, step=3), grpo_step(split, examples, step=3)
    assert torch.equal(a.batch.input_ids, b.batch.input_ids)  # same seeds, same rollouts
    assert a.metrics["loss"] == pytest.approx(b.metrics["loss"], abs=1e-6)
    _assert_grads_close(split.optimizer.grads[0], whole.optimizer.grads[0], what="micro 5 vs whole")
    state = single_process_state()
    assert plan_batches(12, 5, 2, state) == [
        [slice(0, 2), slice(2, 4), slice(4, 5)],
        [slice(5, 7), slice(7, 9), slice(9, 10)],
        [slice(10, 12)],
    ]


def test_ppo_epochs_and_mini_batches_take_one_optimizer_step_each(assets):
    model_dir, videos = assets
    setup = _setup(model_dir, algo=AlgoConfig(ppo_epochs=2, mini_batch_size=4, tis="on"),
                   optimizer=lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5))  # fmt: skip
    before = {n: p.detach().clone() for n, p in setup.adapter.model.named_parameters()}
    out = grpo_step(setup, _examples(videos, 2), step=0)
    assert out.metrics["updates"] == 2 * 2  # 8 sequences / 4 per mini-batch, twice
    # After the first update the policy has moved: later mini-batches see ratios != 1.
    assert out.metrics["ratio_mean"] != 1.0
    # TIS forced on with the hf engine, whose logprobs are the trainer's up to rounding: weights ~1, none capped.
    assert (
        out.metrics["tis_weight_mean"] == pytest.approx(1.0, abs=1e-4) and out.metrics["tis_clip_frac"] == 0
    )
    moved = [n for n, p in setup.adapter.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved and not any("visual" in n for n in moved)  # the vision tower stays frozen


def test_dynamic_sampling_drops_zero_variance_groups_and_refills(assets):
    model_dir, videos = assets
    algo = AlgoConfig(dynamic_sampling=True, max_refill_rounds=2)
    # Batch of 2: question 0 is "flat" (every response scores 1: no variance), question 1 is not.
    pool = _examples(videos, 8, flat=(0, 2, 3))
    drawn = []

    def draw(n):
        start = 2 + len(drawn)
        drawn.extend(pool[start : start + n])
        return pool[start : start + n]

    setup = _setup(model_dir, algo=algo, reward=_reward("constant_for_q0"))
    out = grpo_step(setup, pool[:2], step=0, draw_prompts=draw)
    m = out.metrics
    # Round 0 keeps question 1; round 1 draws questions 2, 3 (both flat); round 2 draws 4, 5 and fills up.
    assert m["rollout_rounds"] == 3 and [ex.id for ex in out.used] == ["0", "1", "2", "3", "4", "5"]
    assert m["groups_total"] == 6 and m["groups_kept"] == 2
    kept = out.batch.advantages.view(2, -1)
    assert (kept.abs().sum(1) > 0).all()  # every kept group carries signal
    # Without refills the flat group is dropped and nothing replaces it.
    setup = _setup(model_dir, algo=algo, reward=_reward("constant_for_q0"))
    out = grpo_step(setup, pool[:2], step=0)
    assert out.metrics["groups_kept"] == 1 and len(out.batch) == 4
    # Without dynamic sampling the flat group stays, with zero advantage.
    setup = _setup(model_dir, reward=_reward("constant_for_q0"))
    out = grpo_step(setup, pool[:2], step=0)
    assert out.metrics["groups_kept"] == 2 and not out.batch.advantages[:4].any()


def test_unreadable_video_is_reported_and_replaced(assets, tmp_path):
    model_dir, videos = assets
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    bad = Example("bad", "q?", ["a", "b"], "A", "", "plain", "video", broken, broken.name)
    spare = _examples(videos, 4)[3:]
    seen = []
    setup = _setup(model_dir)
    setup.on_failed = lambda ex, reason: seen.append((ex.id, reason))
    out = grpo_step(setup, [*_examples(videos, 2), bad], step=0, draw_prompts=lambda n: spare[:n])
    assert [ex.video for ex, _ in out.failed] == [broken] and out.metrics["videos_failed"] == 1
    assert len(seen) == 1 and seen[0][0] == "bad" and "broken.mp4" in seen[0][1]
    assert [ex.id for ex in out.used] == ["0", "1", "bad", "3"] and out.metrics["groups_kept"] == 3
    # Without a source of replacements the step trains on the prompts that remain.
    out = grpo_step(_setup(model_dir), [*_examples(videos, 2), bad], step=0)
    assert out.metrics["groups_kept"] == 2 and len(out.batch) == 2 * 4


@pytest.mark.parametrize("micro", [None, 2], ids=["one-batch", "micro-2"])
def test_ptx_adds_its_weight_times_the_sft_gradient(assets, micro):
    """PPO-ptx: the step's gradient is the GRPO gradient (the same step without the term) plus coef times
    the gradient of the hand-computed mean SFT loss of the rows drawn (3 rows: in one forward, or in
    micro-batches of 2 + 1 normalized by the tokens of all of them); ptx_loss is that mean."""
    model_dir, videos = assets
    examples, rows, coef = _examples(videos, 2), _sft_rows(videos, 3), 0.5
    plain = _setup(model_dir, micro_batch_size=micro)
    grpo_step(plain, examples, step=0)
    setup = _setup(model_dir, micro_batch_size=micro)
    setup.ptx = _ptx_term(rows, coef, batch_size=3)
    out = grpo_step(setup, examples, step=0)
    hand = _hand_ptx_loss(setup, rows)
    assert out.metrics["ptx_loss"] == pytest.approx(hand.item(), rel=1e-5)
    sft = _named_grads(setup.adapter.model, coef * hand)
    pg = plain.optimizer.grads[0]
    expected = {n: pg.get(n, 0) + sft.get(n, 0) for n in pg.keys() | sft.keys()}
    _assert_grads_close(setup.optimizer.grads[0], expected, what="GRPO + ptx vs GRPO + coef * SFT by hand")
    assert (setup.ptx.data.epoch, setup.ptx.data.cursor) == (0, 3)  # one optimizer step: one draw of 3 rows
