"""The `hf` rollout engine vs references, fp32 on CPU with the tiny Qwen2.5-VL.

References and tolerances:
- Greedy tokens: exactly equal to transformers' own `generate` (input_ids + pixel_values_videos +
  video_grid_thw + mm_token_type_ids), and to a naive loop that re-runs the FULL adapter forward (no cache)
  over [prompt | response so far] with positions from `build_inputs` over the whole sequence, i.e. what the
  trainer sees. The second proves that the KV cache, the cache sharing and the decode positions reproduce
  training.
- Logprobs: the engine's per-token logprobs vs the trainer's recomputation (`build_inputs` over
  [prompt | response], `adapter.forward`, `longrl.ops.token_logprobs(temperature=params.logprob_temperature)`)
  within atol 1e-5 (cached 1-token decode vs full forward: same math, different kernel shapes).
- Sampler: hand-computed kept sets for top-k/top-p; empirical frequencies within 0.02 of the truncated,
  renormalized distribution (20k draws: 4+ standard deviations).
"""

from __future__ import annotations

import pytest
import torch
from helpers import requires_cuda
from tiny_model import prompt_batch, random_videos, tiny_model

import longrl.models as M
from longrl import ops
from longrl.errors import ConfigError
from longrl.models.embedding_store import VideoEmbedding
from longrl.parallel.sp_prefill import next_token_targets
from longrl.rollout import (
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    engine_class,
    pad_responses,
)
from longrl.rollout.hf import HFEngine, sample_tokens, truncate_logits

# Videos of different lengths (so the prompts are padded) and shapes.
GRIDS = [(2, 4, 6), (4, 2, 4), (1, 4, 4)]
SECONDS = torch.tensor([1.0, 0.5, 2.0])
ATOL = 1e-5


def _setup(side: str = "left", grids=GRIDS, seed: int = 1):
    """(adapter, tokenizer, RolloutBatch, prompt pixels, grid) for one prompt per video."""
    model, tok = tiny_model()
    adapter = M.wrap_model(model)
    pixels, grid = random_videos(grids, seed=seed)
    ids, mask = prompt_batch(tok, grids, side)
    embeds = adapter.encode_video(pixels, grid)
    seconds = SECONDS[: len(grids)]
    batch = RolloutBatch(ids, mask, embeds, grid, seconds)
    batch.inputs = adapter.build_inputs(ids, mask, embeds, grid, seconds)
    return adapter, tok, batch, pixels, grid


def _trainer_batch(adapter, batch: RolloutBatch, prompt_rows: list[int], responses: list[list[int]]):
    """The trainer's view: right-padded [prompt | response] rows through `build_inputs` (positions from
    get_rope_index over the whole sequence). Returns (MultimodalInputs, input_ids, prompt lengths)."""
    prompts = batch.prompt_ids()
    rows = [prompts[p] + list(r) for p, r in zip(prompt_rows, responses, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    embeds = [batch.video_embeds[p] for p in prompt_rows]
    grid = batch.video_grid_thw[prompt_rows]
    seconds = None if batch.second_per_grid_ts is None else batch.second_per_grid_ts[prompt_rows]
    return adapter.build_inputs(ids, mask, embeds, grid, seconds), ids, [len(prompts[p]) for p in prompt_rows]


def _reference_greedy(adapter, batch: RolloutBatch, max_new: int, stop_ids: set[int]) -> list[list[int]]:
    """Greedy decoding that re-runs the full forward over the growing sequences at every step (no cache)."""
    n = len(batch)
    responses: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new):
        live = [i for i in range(n) if not done[i]]
        if not live:
            break
        inputs, _, plen = _trainer_batch(adapter, batch, live, [responses[i] for i in live])
        logits = adapter.logits(inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask)
        for j, i in enumerate(live):
            last = plen[j] + len(responses[i]) - 1
            tok = int(logits[j, last].argmax())
            responses[i].append(tok)
            done[i] = tok in stop_ids
    return responses


@torch.no_grad()
def test_greedy_equals_hf_generate():
    adapter, _, batch, pixels, grid = _setup()
    model = adapter.model
    assert batch.attention_mask.sum(1).unique().numel() == len(GRIDS)  # really padded
    engine = HFEngine(adapter)
    results = engine.generate(batch, SamplingParams(max_new_tokens=12, greedy=True))

    ids = batch.input_ids
    out = model.generate(
        input_ids=ids,
        attention_mask=batch.attention_mask,
        pixel_values_videos=pixels,
        video_grid_thw=grid,
        second_per_grid_ts=batch.second_per_grid_ts,
        mm_token_type_ids=adapter.mm_token_type_ids(ids),
        do_sample=False,
        max_new_tokens=12,
        output_scores=True,
        return_dict_in_generate=True,
    )
    ref = out.sequences[:, ids.shape[1] :]
    pad = model.generation_config.pad_token_id
    assert [r.prompt_index for r in results] == [0, 1, 2]
    for b, (r, row) in enumerate(zip(results, ref, strict=True)):
        mine, theirs = r.token_ids.tolist(), row[: len(r)].tolist()
        split = next((t for t, (x, y) in enumerate(zip(mine, theirs, strict=True)) if x != y), None)
        if split is None:
            assert (row[len(r) :] == pad).all()  # HF stopped there too (or both hit the length cap)
            continue
        # A random tiny model can meet an exact-arithmetic tie; a different kernel may then take the other
        # token and the two continuations part. Allowed only there: HF's top two logits within 1e-4, and the
        # engine chose one of them. Every token before it must be equal (checked by `split`).
        top = out.scores[split][b].topk(2)
        assert float(top.values[0] - top.values[1]) < 1e-4, (b, split, top)
        assert mine[split] in top.indices.tolist()


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_greedy_equals_full_forward_reference(side):
    """The cached, shared-prefill decode with `decode_position_ids` == the trainer's full forward, step by
    step; tokens exactly, logprobs within 1e-5. Right-padded input is re-padded by the engine."""
    adapter, _, batch, _, _ = _setup(side)
    engine = HFEngine(adapter)
    max_new = 10
    params = SamplingParams(n=2, max_new_tokens=max_new, greedy=True)
    results = engine.generate(batch, params)
    ref = _reference_greedy(adapter, batch, max_new, set(engine.eos_ids))
    assert len(results) == 2 * len(GRIDS)
    for r in results:
        assert r.token_ids.tolist() == ref[r.prompt_index]
    _check_logprobs_against_trainer(adapter, batch, results, params)


@torch.no_grad()
def test_long_video_decode_positions_equal_the_trainers():
    """A video whose temporal positions run far past the text after it (16 patches x 2 s at 2 tokens/s =
    60 positions, a few dozen text tokens): decoding must continue at the same positions the trainer's full
    forward gives the response (with transformers 5.x's get_rope_index they differed by tens)."""
    adapter, _, batch, _, _ = _setup("left", grids=[(16, 2, 2), (2, 4, 6)])
    batch.second_per_grid_ts = torch.tensor([2.0, 1.0])
    batch.inputs = adapter.build_inputs(
        batch.input_ids,
        batch.attention_mask,
        batch.video_embeds,
        batch.video_grid_thw,
        batch.second_per_grid_ts,
    )
    engine = HFEngine(adapter)
    params = SamplingParams(n=1, max_new_tokens=8, greedy=True)
    results = engine.generate(batch, params)
    ref = _reference_greedy(adapter, batch, 8, set(engine.eos_ids))
    assert [r.token_ids.tolist() for r in results] == ref
    _check_logprobs_against_trainer(adapter, batch, results, params)


def _check_logprobs_against_trainer(
    adapter, batch, results, params: SamplingParams, atol: float = ATOL
) -> None:
    inputs, ids, plen = _trainer_batch(
        adapter, batch, [r.prompt_index for r in results], [r.token_ids.tolist() for r in results]
    )
    response_mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(results):
        response_mask[i, plen[i] : plen[i] + len(r)] = True
    targets = next_token_targets(ids, response_mask).to(adapter.device)
    hidden = adapter.forward(inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask)
    logp = ops.token_logprobs(hidden, adapter.lm_head_weight, targets, temperature=params.logprob_temperature)
    logp = logp.cpu()
    for i, r in enumerate(results):
        want = logp[i, plen[i] - 1 : plen[i] - 1 + len(r)]
        torch.testing.assert_close(r.logprobs, want, atol=atol, rtol=0)
        assert r.logprobs.dtype == torch.float32 and (r.logprobs < 0).all()


@pytest.mark.parametrize(
    "temperature,top_k,top_p,side",
    [(1.0, 0, 1.0, "left"), (0.7, 20, 0.9, "right"), (1.6, 5, 1.0, "left")],
)
@torch.no_grad()
def test_sampled_logprobs_equal_trainer_logprobs(temperature, top_k, top_p, side):
    """The property the PPO ratio rests on: engine logprobs == trainer logprobs at the same temperature."""
    adapter, _, batch, _, _ = _setup(side)
    params = SamplingParams(n=3, max_new_tokens=16, temperature=temperature, top_k=top_k, top_p=top_p, seed=3)
    results = HFEngine(adapter).generate(batch, params)
    assert len(results) == 3 * len(GRIDS)
    _check_logprobs_against_trainer(adapter, batch, results, params)
    if top_k:  # every sampled token is within the top-k of its step, by the trainer's logits at T
        inputs, ids, plen = _trainer_batch(
            adapter, batch, [r.prompt_index for r in results], [r.token_ids.tolist() for r in results]
        )
        logits = adapter.logits(inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask)
        for i, r in enumerate(results):
            step_logits = logits[i, plen[i] - 1 : plen[i] - 1 + len(r)]
            kth = step_logits.topk(top_k, dim=-1).values[:, -1]
            assert (step_logits.gather(1, r.token_ids[:, None]).squeeze(1) >= kth).all()


@torch.no_grad()
def test_one_prefill_shared_by_the_group_and_no_vision_tower():
    adapter, _, batch, pixels, grid = _setup()
    calls = {"prefill": 0, "decode": 0, "tower": 0}
    forward = adapter.forward

    def counting_forward(inputs_embeds, *args, **kwargs):
        calls["prefill" if inputs_embeds.shape[1] > 1 else "decode"] += 1
        return forward(inputs_embeds, *args, **kwargs)

    adapter.forward = counting_forward
    hook = adapter.vision_tower.register_forward_hook(
        lambda *_: calls.__setitem__("tower", calls["tower"] + 1)
    )
    try:
        engine = HFEngine(adapter)
        params = SamplingParams(n=4, max_new_tokens=8, seed=11, ignore_eos=True)
        results = engine.generate(batch, params)
        assert calls == {"prefill": 1, "decode": 7, "tower": 0}  # one batched prefill for 3 prompts x 4

        # Without prebuilt inputs the engine builds them from the cached embeddings: still no tower call.
        bare = RolloutBatch(
            batch.input_ids, batch.attention_mask, batch.video_embeds, grid, batch.second_per_grid_ts
        )
        again = engine.generate(bare, params)
        assert calls["tower"] == 0 and calls["prefill"] == 2
        assert all(torch.equal(a.token_ids, b.token_ids) for a, b in zip(results, again, strict=True))

        # Prompts in chunks of 2: one prefill per chunk.
        HFEngine(adapter, prompt_batch_size=2).generate(batch, params)
        assert calls["prefill"] == 4 and calls["tower"] == 0

        adapter.encode_video(pixels, grid)  # the counter does see tower calls
        assert calls["tower"] == 1
    finally:
        hook.remove()

    # The group's samples differ; the same seed repeats them; another seed does not.
    groups = [[r.token_ids.tolist() for r in results if r.prompt_index == p] for p in range(len(GRIDS))]
    assert [[r.sample_index for r in results if r.prompt_index == p] for p in range(3)] == [[0, 1, 2, 3]] * 3
    assert all(len({tuple(s) for s in g}) == 4 for g in groups)
    other = engine.generate(batch, SamplingParams(n=4, max_new_tokens=8, seed=12, ignore_eos=True))
    assert any(not torch.equal(a.token_ids, b.token_ids) for a, b in zip(results, other, strict=True))


@torch.no_grad()
def test_stop_tokens_end_responses_and_padding_follows():
    """A stop id ends each row at its first occurrence (token kept, finish "stop"); the other rows, which
    keep decoding after finished rows leave the cache, are unchanged."""
    adapter, tok, batch, _, _ = _setup()
    engine = HFEngine(adapter, tok)
    free = engine.generate(batch, SamplingParams(max_new_tokens=12, greedy=True, ignore_eos=True))
    stop = free[0].token_ids[3].item()
    stopped = engine.generate(
        batch, SamplingParams(max_new_tokens=12, greedy=True, stop_token_ids=(stop,), ignore_eos=False)
    )
    n_stopped = 0
    for f, s in zip(free, stopped, strict=True):
        full = f.token_ids.tolist()
        cut = full.index(stop) + 1 if stop in full else len(full)
        assert s.token_ids.tolist() == full[:cut]
        torch.testing.assert_close(s.logprobs, f.logprobs[:cut], atol=ATOL, rtol=0)
        assert s.finish_reason == (FINISH_STOP if stop in full else FINISH_LENGTH)
        n_stopped += stop in full
        assert s.text == tok.decode(s.token_ids[: len(s) - (stop in full)].tolist(), skip_special_tokens=True)
    assert 0 < n_stopped and len(stopped[0]) == 4 and {len(r) for r in stopped} != {4}

    assert pad_responses(stopped, 0)[0].shape == (3, max(len(r) for r in stopped))
    ids, logprobs, mask = pad_responses(stopped, pad_token_id=-1, length=12)
    assert ids.shape == (3, 12) and mask.sum(1).tolist() == [len(r) for r in stopped]
    assert (ids[~mask] == -1).all() and (logprobs[~mask] == 0).all()
    for i, r in enumerate(stopped):
        assert torch.equal(ids[i, : len(r)], r.token_ids) and torch.equal(logprobs[i, : len(r)], r.logprobs)
    with pytest.raises(ValueError, match="shorter"):
        pad_responses(stopped, 0, length=3)


@torch.no_grad()
def test_max_new_tokens_respected_and_eos_stops():
    adapter, _, batch, _, _ = _setup()
    engine = HFEngine(adapter)
    for max_new in (1, 5):
        results = engine.generate(batch, SamplingParams(n=2, max_new_tokens=max_new, seed=0, ignore_eos=True))
        assert all(len(r) == max_new and r.finish_reason == FINISH_LENGTH for r in results)
    # Sampling at a high temperature hits the model's eos ids within 40 tokens for some samples.
    results = engine.generate(batch, SamplingParams(n=4, max_new_tokens=40, temperature=1.0, seed=0))
    assert all(len(r) <= 40 for r in results)
    ended = [r for r in results if r.finish_reason == FINISH_STOP]
    assert ended and all(r.token_ids[-1].item() in engine.eos_ids for r in ended)
    for r in results:  # no eos anywhere but at the end
        assert not any(t in engine.eos_ids for t in r.token_ids[:-1].tolist())


@torch.no_grad()
def test_update_weights_reaches_the_engine():
    model, tok = tiny_model(fresh=True)
    adapter = M.wrap_model(model)
    pixels, grid = random_videos(GRIDS, seed=1)
    ids, mask = prompt_batch(tok, GRIDS, "left")
    batch = RolloutBatch(ids, mask, adapter.encode_video(pixels, grid), grid)
    engine = HFEngine(adapter)
    params = SamplingParams(max_new_tokens=6, greedy=True, ignore_eos=True)
    before = [r.token_ids for r in engine.generate(batch, params)]

    g = torch.Generator().manual_seed(0)
    new_head = model.lm_head.weight + torch.randn(model.lm_head.weight.shape, generator=g)
    engine.update_weights({"lm_head.weight": new_head})
    assert torch.equal(model.lm_head.weight, new_head)
    after = [r.token_ids for r in engine.generate(batch, params)]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert _reference_greedy(adapter, batch, 6, set()) == [a.tolist() for a in after]  # the new weights

    engine.update_weights(model.named_parameters())  # the model's own tensors: nothing to copy
    with pytest.raises(KeyError, match="no weight named"):
        engine.update_weights({"not.a.weight": new_head})
    with pytest.raises(ValueError, match="lm_head.weight"):
        engine.update_weights({"lm_head.weight": new_head[:3]})
    engine.sleep()
    engine.wake()


@torch.no_grad()
def test_from_video_batch_and_model_modes():
    """The trainer's path: cached VideoEmbeddings -> build_video_batch -> RolloutBatch; the engine leaves
    every module's train/eval mode as it found it."""
    model, tok = tiny_model(fresh=True)
    adapter = M.wrap_model(model)
    pixels, grid = random_videos(GRIDS, seed=1)
    embeds = adapter.encode_video(pixels, grid)
    videos = [
        VideoEmbedding(e, tuple(g.tolist()), float(s)) for e, g, s in zip(embeds, grid, SECONDS, strict=True)
    ]
    vb = M.build_video_batch(adapter, tok, videos, ["What happens?", "Why?", "Who is there?"])
    batch = RolloutBatch.from_video_batch(vb, videos)
    model.train()
    adapter.vision_tower.eval()
    engine = HFEngine(adapter, tok)
    assert isinstance(engine, RolloutEngine) and engine_class("hf") is HFEngine
    results = engine.generate(batch, SamplingParams(n=2, max_new_tokens=6, greedy=True))
    assert model.training and model.model.language_model.training and not adapter.vision_tower.training
    assert all(torch.equal(results[2 * p].token_ids, results[2 * p + 1].token_ids) for p in range(3))
    ref = _reference_greedy(adapter, batch, 6, set(engine.eos_ids))
    assert [r.token_ids.tolist() for r in results[::2]] == ref
    assert all(isinstance(r.text, str) for r in results)


def test_truncate_logits_hand_computed():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda k, p: torch.isfinite(truncate_logits(logits, k, p))[0].tolist()  # noqa: E731
    assert kept(0, 1.0) == [True] * 4
    assert kept(2, 1.0) == [True, True, False, False]
    assert kept(0, 0.8) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert kept(0, 0.81) == [True, True, True, False]
    assert kept(0, 0.01) == [True, False, False, False]  # the most likely token always stays
    assert kept(3, 0.7) == [True, True, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]  # order of the vocabulary does not matter
    assert torch.isfinite(truncate_logits(shuffled, 0, 0.8))[0].tolist() == [False, True, False, True]


def test_sampler_frequencies_and_logprobs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 12, generator=g) * 2
    params = SamplingParams(temperature=0.8, top_k=6, top_p=0.9, seed=0)
    n = 20000
    tokens, logprobs = sample_tokens(logits.expand(n, -1), params, torch.Generator().manual_seed(1))
    scaled = logits[0] / 0.8
    want = torch.softmax(truncate_logits(scaled[None], 6, 0.9)[0], -1)
    freq = torch.bincount(tokens, minlength=12).float() / n
    torch.testing.assert_close(freq, want, atol=0.02, rtol=0)
    assert (want[tokens] > 0).all()
    torch.testing.assert_close(logprobs, torch.log_softmax(scaled, -1)[tokens], atol=1e-6, rtol=0)
    # Greedy: argmax, logprob at temperature 1; temperature 0 is greedy too.
    for p in (SamplingParams(greedy=True, temperature=0.5), SamplingParams(temperature=0)):
        tok, lp = sample_tokens(logits, p, None)
        assert tok.item() == logits.argmax().item() and p.logprob_temperature == 1.0
        torch.testing.assert_close(lp, torch.log_softmax(logits, -1)[0, tok], atol=1e-6, rtol=0)


def test_sampling_params_validation():
    assert SamplingParams(temperature=0.6).logprob_temperature == 0.6
    assert SamplingParams(stop_token_ids=[5, 7]).stop_token_ids == (5, 7)
    for bad in (
        {"n": 0},
        {"max_new_tokens": 0},
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
    ):
        with pytest.raises(ConfigError):
            SamplingParams(**bad)
    with pytest.raises(ConfigError, match="unknown rollout engine"):
        engine_class("nope")
    with pytest.raises(ValueError, match="input_ids and attention_mask"):
        RolloutBatch(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4))


@requires_cuda
@torch.no_grad()
def test_cuda_engine_matches_trainer():
    """The same two properties on a GPU (fp32; atol 1e-4: CUDA attention kernels differ between the 1-token
    decode and the full forward more than CPU ones): greedy == the full-forward reference loop, and sampled
    logprobs == the trainer's, with the sampler's generator on the GPU."""
    model, tok = tiny_model(fresh=True)
    adapter = M.wrap_model(model.cuda())
    pixels, grid = random_videos(GRIDS, seed=1)
    ids, mask = prompt_batch(tok, GRIDS, "left")
    batch = RolloutBatch(ids, mask, adapter.encode_video(pixels, grid), grid, SECONDS)
    engine = HFEngine(adapter, tok)
    greedy = SamplingParams(max_new_tokens=10, greedy=True)
    results = engine.generate(batch, greedy)
    assert [r.token_ids.tolist() for r in results] == _reference_greedy(
        adapter, batch, 10, set(engine.eos_ids)
    )
    _check_logprobs_against_trainer(adapter, batch, results, greedy, atol=1e-4)
    params = SamplingParams(n=4, max_new_tokens=16, temperature=0.9, top_p=0.95, seed=5)
    results = engine.generate(batch, params)
    _check_logprobs_against_trainer(adapter, batch, results, params, atol=1e-4)
    again = engine.generate(batch, params)
    assert all(torch.equal(a.token_ids, b.token_ids) for a, b in zip(results, again, strict=True))
