"""MR-SP stage 2: sequence-parallel prefill of the tiny Qwen2.5-VL vs the single-process HF model.

Reference (computed in the parent): `adapter.logits` of the whole right-padded batch (the HF decoder with its
own 2-D mask and sdpa), log_softmax gathered at the next-token targets; and the parameter gradients of a
GRPO-style loss  sum_{b,i} adv_b * exp(logp - logp.detach()) * scored / N,  N = scored tokens of the WHOLE
batch (all dp replicas). Runs: sp = 1 in this process; sp = 4 (dp 1) and dp = 2 x sp = 2 (each replica its own
samples) in one 4-process gloo world; ring and Ulysses attention each; video embeddings come from the
sharded stage-1 encoder. Cases: "mixed" (4 samples with different videos, prompt and response lengths:
L = 91 and per-replica 91 / 71, not multiples of 2*sp) and "short" (text-only rows of 3 and 5 tokens:
fewer tokens than the 2*sp chunks).

Tolerances: logprobs and entropies |sp - ref| <= 1e-5 (fp32). Gradients, for every parameter that
requires grad (vision tower frozen, as in RL): max|g_sp - g| <= 1e-4 * max|g| per tensor.
"""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_model import random_videos, tiny_model

import longrl.models as M
from longrl.models import prompt as P
from longrl.parallel.groups import single_process_state
from longrl.parallel.launch import run_local
from longrl.parallel.sp_attention import ATTN_IMPLEMENTATION, resolve_sp_attn, sp_attention
from longrl.parallel.sp_prefill import next_token_targets, sp_token_logprobs, sync_gradients

WORLD = 4
TIMEOUT_S = 300
MODES = ("ring", "ulysses")
LOGP_ATOL = 1e-5
GRAD_RTOL = 1e-4


# ---- the batch -------------------------------------------------------------------------------------------


def _samples(tok):
    """Two cases of samples: (ids, score mask, video grid or None, advantage, seconds per temporal patch)."""
    g = torch.Generator().manual_seed(0)
    mixed = []
    grids = [(2, 4, 6), (4, 2, 4), (1, 4, 4), (3, 2, 2)]
    words = ["one two", "a much longer answer with several words in it", "x", "short but not tiny"]
    for i, (grid, text) in enumerate(zip(grids, words, strict=True)):
        prompt = P.build_prompt_ids(tok, "What?" + " and" * i, ["yes", "no"][: 1 + i % 2],
                                    num_video_tokens=P.num_video_tokens(grid), system_prompt="Answer.")  # fmt: skip
        response = P.encode_response(tok, text)
        ids = torch.tensor(prompt + response)
        score = torch.zeros(len(ids), dtype=torch.bool)
        score[len(prompt) :] = True
        mixed.append((ids, score, grid, float(torch.randn((), generator=g)), 0.5 + i))
    short = []
    for i, n in enumerate((3, 5)):
        ids = torch.randint(10, 200, (n,), generator=g)
        score = torch.ones(n, dtype=torch.bool)
        short.append((ids, score, None, 1.0 - 2 * i, 1.0))
    return {"mixed": mixed, "short": short}


def _collate(samples, pad_id):
    """Right-padded batch: ids [B, L], mask [B, L], targets [B, L], advantages [B], video grids/seconds."""
    ids, mask = P.pad_batch([s[0].tolist() for s in samples], pad_id, side="right")
    score = torch.zeros_like(mask, dtype=torch.bool)
    for b, s in enumerate(samples):
        score[b, : len(s[1])] = s[1]
    grids = [s[2] for s in samples if s[2] is not None]
    return {
        "ids": ids,
        "mask": mask,
        "targets": next_token_targets(ids, score),
        "adv": torch.tensor([s[3] for s in samples]),
        "grids": grids,
        "seconds": [s[4] for s in samples if s[2] is not None],
    }


def _replicas(samples, dp):
    """Split a case's samples over dp replicas (contiguous halves)."""
    per = -(-len(samples) // dp)
    return [samples[d * per : (d + 1) * per] for d in range(dp)]


def _inputs(adapter, batch, pixels, encode):
    """MultimodalInputs of a collated batch; `encode(pixels, grid)` gives the video embeddings."""
    grid = torch.tensor(batch["grids"], dtype=torch.long).reshape(-1, 3)
    with torch.no_grad():
        embeds = encode(pixels, grid) if len(grid) else []
    return adapter.build_inputs(batch["ids"], batch["mask"], embeds, grid if len(grid) else None,
                                batch["seconds"] or None)  # fmt: skip


def _loss(logp, batch, n_global):
    """GRPO-style surrogate: advantage * ratio (= 1 in value, its gradient is d logp), token sum / N."""
    scored = (batch["targets"] != -100).float()
    ratio = torch.exp(logp - logp.detach())
    return (batch["adv"][:, None] * ratio * scored).sum() / n_global


def _grads(adapter):
    return {n: p.grad.detach().clone() for n, p in adapter.model.named_parameters() if p.requires_grad}


def _grad_errors(got, ref):
    """Per parameter: (max|g_sp - g|, max|g|)."""
    assert got.keys() == ref.keys()
    return {n: ((got[n] - ref[n]).abs().max().item(), ref[n].abs().max().item()) for n in ref}


# ---- sp ranks --------------------------------------------------------------------------------------------


def _run_config(adapter, state, cases, pixels_of, ref_grads):
    """Every case x mode on this rank's replica; returns {(case, mode): result}."""
    from longrl.parallel.vision_shard import encode_videos_sharded

    def encode(pixels, grid):
        return encode_videos_sharded(adapter, pixels, grid, state.sp_group)

    out = {}
    for name, samples in cases.items():
        n_global = sum(int(s[1][1:].sum()) for s in samples)
        mine = _replicas(samples, state.dp_size)[state.dp_rank]
        batch = _collate(mine, adapter.config.text_config.pad_token_id)
        pixels = pixels_of(name, state.dp_size, state.dp_rank)
        for mode in MODES:
            with torch.no_grad():
                inputs = _inputs(adapter, batch, pixels, encode)
                logp, entropy = sp_token_logprobs(
                    adapter, inputs, batch["targets"], state, attn=mode, return_entropy=True
                )
            adapter.model.zero_grad(set_to_none=True)
            inputs = _inputs(adapter, batch, pixels, encode)
            logp_grad = sp_token_logprobs(adapter, inputs, batch["targets"], state, attn=mode)
            _loss(logp_grad, batch, n_global).backward()
            sync_gradients(adapter.model, state, dp_reduce="sum")
            out[(name, mode)] = {
                "logp": logp,
                "entropy": entropy,
                "logp_grad_path": logp_grad.detach(),
                "grad_errors": _grad_errors(_grads(adapter), ref_grads[name]),
            }
    return out


def _worker(model, cases, pixels, ref_grads):
    from longrl.parallel.groups import init_parallel

    adapter = M.wrap_model(model)
    adapter.set_vision_trainable(False)

    def pixels_of(name, dp, d):
        return pixels[(name, dp, d)]

    results = {}
    for sp in (4, 2):  # sp 4 x dp 1, then dp 2 x sp 2 (same world, new groups)
        state = init_parallel(sp)
        results[(sp, state.dp_size)] = _run_config(adapter, state, cases, pixels_of, ref_grads)
    return results


# ---- the reference and the runs --------------------------------------------------------------------------


@torch.enable_grad()  # it computes gradients, even when first reached from a no-grad test through _setup()
def _reference(adapter, batch, pixels, n_global):
    """Single-process HF model: logprobs, entropies and gradients of the whole batch."""
    adapter.model.zero_grad(set_to_none=True)
    inputs = _inputs(adapter, batch, pixels, adapter.encode_video)
    logits = adapter.logits(inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask).float()
    logsm = torch.log_softmax(logits, -1)
    scored = batch["targets"] != -100
    logp = logsm.gather(-1, batch["targets"].clamp(min=0)[..., None])[..., 0] * scored
    entropy = -(logsm.exp() * logsm).sum(-1) * scored
    _loss(logp, batch, n_global).backward()
    return logp.detach(), entropy.detach(), _grads(adapter)


def _patches(samples):
    return sum(s[2][0] * s[2][1] * s[2][2] for s in samples if s[2] is not None)


def _video_pixels(samples, seed):
    grids = [s[2] for s in samples if s[2] is not None]
    return random_videos(grids, seed)[0] if grids else torch.zeros(0, 1176)


@functools.cache
def _setup():
    model, tok = tiny_model(fresh=True)
    adapter = M.wrap_model(model)
    adapter.set_vision_trainable(False)
    cases = _samples(tok)
    # Every (case, dp size, replica) gets its replica's videos; one seed per case so they agree everywhere.
    pixels = {}
    for name, samples in cases.items():
        for dp in (1, 2):
            for d, mine in enumerate(_replicas(samples, dp)):
                full = _video_pixels(samples, seed=len(name))
                skip = sum(_patches(r) for r in _replicas(samples, dp)[:d])
                take = _patches(mine)
                pixels[(name, dp, d)] = full[skip : skip + take]
    refs = {}
    for name, samples in cases.items():
        batch = _collate(samples, model.config.text_config.pad_token_id)
        n_global = int((batch["targets"] != -100).sum())
        refs[name] = (batch, *_reference(adapter, batch, pixels[(name, 1, 0)], n_global))
    return model, adapter, cases, pixels, refs


@functools.cache
def _distributed():
    model, adapter, cases, pixels, refs = _setup()
    ref_grads = {name: r[3] for name, r in refs.items()}
    return run_local(_worker, WORLD, model, cases, pixels, ref_grads, timeout_s=TIMEOUT_S)


def _check_logprobs(logp, entropy, ref, rows, what):
    batch, ref_logp, ref_entropy, _ = ref
    length = logp.shape[1]
    assert not ref_logp[rows, length:].any()  # the reference's extra columns are padding
    torch.testing.assert_close(logp, ref_logp[rows, :length], atol=LOGP_ATOL, rtol=0, msg=what)
    if entropy is not None:
        torch.testing.assert_close(entropy, ref_entropy[rows, :length], atol=LOGP_ATOL, rtol=0, msg=what)


def _check_grads(errors, what):
    bad = {n: e for n, e in errors.items() if e[0] > GRAD_RTOL * e[1] or (e[1] == 0 and e[0] > 0)}
    assert not bad, f"{what}: gradients differ (max err, max |g|): {bad}"


def test_cases_exercise_what_they_claim():
    _, _, cases, _, refs = _setup()
    mixed = refs["mixed"][0]
    assert mixed["ids"].shape[1] % 8 and mixed["ids"].shape[1] % 4  # not a multiple of 2*sp for sp 2, 4
    assert mixed["mask"].sum(1).unique().numel() == 4  # different lengths -> real right padding
    assert len({s[2] for s in cases["mixed"]}) == 4  # different video grids
    assert refs["short"][0]["ids"].shape[1] < 8  # shorter than 2*sp chunks at sp 4


# ---- sp = 1, in this process -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["mixed", "short"])
def test_sp1_equals_single_process(case, mode):
    model, adapter, cases, pixels, refs = _setup()
    state = single_process_state()
    batch = refs[case][0]
    with torch.no_grad():
        inputs = _inputs(adapter, batch, pixels[(case, 1, 0)], adapter.encode_video)
        logp, entropy = sp_token_logprobs(
            adapter, inputs, batch["targets"], state, attn=mode, return_entropy=True
        )
    _check_logprobs(logp, entropy, refs[case], slice(None), f"sp=1 {mode} {case}")
    adapter.model.zero_grad(set_to_none=True)
    inputs = _inputs(adapter, batch, pixels[(case, 1, 0)], adapter.encode_video)
    logp = sp_token_logprobs(adapter, inputs, batch["targets"], state, attn=mode)
    _loss(logp, batch, int((batch["targets"] != -100).sum())).backward()
    sync_gradients(adapter.model, state)  # a no-op for one process
    _check_grads(_grad_errors(_grads(adapter), refs[case][3]), f"sp=1 {mode} {case}")


# ---- sp = 4 and dp = 2 x sp = 2 --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["mixed", "short"])
@pytest.mark.parametrize("sp,dp", [(4, 1), (2, 2)], ids=["sp4", "dp2xsp2"])
def test_sharded_prefill_equals_single_process(sp, dp, case, mode):
    _, _, cases, _, refs = _setup()
    results = _distributed()
    per = -(-len(cases[case]) // dp)
    for rank, out in enumerate(results):
        r = out[(sp, dp)][(case, mode)]
        d = rank // sp
        rows = slice(d * per, (d + 1) * per)
        what = f"sp={sp} dp={dp} {mode} {case} rank {rank}"
        _check_logprobs(r["logp"], r["entropy"], refs[case], rows, what)
        _check_logprobs(r["logp_grad_path"], None, refs[case], rows, what + " (grad path)")
        _check_grads(r["grad_errors"], what)


# ---- the hook itself -------------------------------------------------------------------------------------


def test_left_padding_is_rejected():
    _, adapter, _, _, refs = _setup()
    batch = refs["short"][0]
    ids, mask = P.pad_batch([[15, 16, 17], [15, 16, 17, 18, 19]], 0, side="left")
    inputs = adapter.build_inputs(ids, mask, [], None)
    with pytest.raises(ValueError, match="right-padded"):
        sp_token_logprobs(adapter, inputs, batch["targets"], single_process_state())


@torch.no_grad()
def test_hook_only_touches_the_language_model_and_only_inside_the_block():
    from transformers.masking_utils import create_causal_mask

    _, adapter, _, _, refs = _setup()
    text, vision = adapter.model.config.text_config, adapter.model.config.vision_config
    before = (text._attn_implementation, vision._attn_implementation)
    pixels, grid = random_videos([(2, 4, 6)], seed=9)
    outside = adapter.encode_video(pixels, grid)[0]
    with sp_attention(adapter, None, "ring"):
        assert text._attn_implementation == ATTN_IMPLEMENTATION
        assert vision._attn_implementation == before[1]
        assert torch.equal(adapter.encode_video(pixels, grid)[0], outside)  # vision attention untouched
        # transformers builds no mask for the registered implementation, even given a padded 2-D mask.
        embeds = torch.zeros(1, 6, adapter.hidden_size)
        assert create_causal_mask(text, embeds, torch.tensor([[1, 1, 1, 1, 0, 0]]), None, None) is None
    assert (text._attn_implementation, vision._attn_implementation) == before
    # Outside the block the hook refuses to run (e.g. checkpoint recomputation after the block ended).
    inputs = adapter.build_inputs(torch.tensor([[15, 16, 17]]), None, [], None)
    text._attn_implementation = ATTN_IMPLEMENTATION
    try:
        with pytest.raises(RuntimeError, match="outside"):
            adapter.forward(inputs.inputs_embeds, inputs.position_ids, None)
    finally:
        text._attn_implementation = before[0]


def test_backward_recomputation_on_another_thread_sees_the_block():
    """Checkpoint recomputation runs the hook in backward; autograd may run backward on a worker thread
    (on CUDA it always does), which does not inherit the caller's context variables. The active SP config
    must be visible there too. Here the backward is driven from a plain thread (CPU autograd runs it on the
    calling thread) while the block is open in the main thread; gradients must match an uncheckpointed run.
    """
    import threading

    from torch.utils.checkpoint import checkpoint

    _, adapter, _, _, _ = _setup()
    inputs = adapter.build_inputs(torch.tensor([[15, 16, 17, 18, 19, 20, 21, 22]]), None, [], None)
    embeds = inputs.inputs_embeds.detach()

    def grad_of_embeds(checkpointed: bool, backward_in_thread: bool) -> torch.Tensor:
        x = embeds.clone().requires_grad_(True)
        errors = []
        with sp_attention(adapter, None, "ring"):

            def run(e):
                return adapter.forward(e, inputs.position_ids, None)

            out = checkpoint(run, x, use_reentrant=False) if checkpointed else run(x)
            loss = out.float().square().mean()
            if backward_in_thread:

                def backward():
                    try:
                        loss.backward()
                    except BaseException as err:  # re-raised below, in the test's thread
                        errors.append(err)

                worker = threading.Thread(target=backward)
                worker.start()
                worker.join()
            else:
                loss.backward()
        if errors:
            raise errors[0]
        return x.grad

    ref = grad_of_embeds(checkpointed=False, backward_in_thread=False)
    got = grad_of_embeds(checkpointed=True, backward_in_thread=True)
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_resolve_sp_attn():
    from longrl.errors import ConfigError

    assert resolve_sp_attn("auto", 4, 2, 2) == "ulysses"
    assert resolve_sp_attn("auto", 4, 2, 4) == "ring"  # KV heads would need replicating
    assert resolve_sp_attn("auto", 28, 4, 8) == "ring"
    assert resolve_sp_attn("ring", 28, 4, 8) == "ring"
    assert resolve_sp_attn("ulysses", 4, 2, 4) == "ulysses"
    with pytest.raises(ConfigError):
        resolve_sp_attn("ulysses", 28, 4, 8)
    with pytest.raises(ConfigError):
        resolve_sp_attn("fast", 4, 2, 2)


def test_next_token_targets():
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    score = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    assert next_token_targets(ids, score).tolist() == [[-100, 3, 4, -100], [6, 7, -100, -100]]
