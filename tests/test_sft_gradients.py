"""CoT-SFT gradients on the tiny model (CPU): accumulation gives one big batch's update, activation
checkpointing recomputes the layers and gives the same gradients."""

from __future__ import annotations

import pytest
import torch

from longrl.sft.trainer import compute_gradients
from longrl.train.setup import close_run, setup_run
from tests.train_fixtures import make_train_setup, sft_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_train_setup(tmp_path_factory.mktemp("sft"))


def gradients(paths, out, extra) -> tuple[object, dict[str, torch.Tensor]]:
    """(GradStats, {param name: grad}) of the first step of a fresh run."""
    ctx = setup_run(sft_config(paths, out, extra), "sft")
    try:
        stats = compute_gradients(ctx)
        return stats, {n: p.grad.clone() for n, p in ctx.model.named_parameters() if p.grad is not None}
    finally:
        close_run(ctx)


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of max|a - b| / max|a| (each tensor against its own scale)."""
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-30)) for k in a)


def test_gradient_accumulation_equals_one_big_batch(setup, tmp_path):
    big_stats, big = gradients(setup, tmp_path / "big", {"batch_size": 4})
    acc_stats, acc = gradients(setup, tmp_path / "acc", {"batch_size": 2, "grad_accum": 2})
    assert acc_stats.sequences == big_stats.sequences == 4 and acc_stats.tokens == big_stats.tokens
    assert acc_stats.loss == pytest.approx(big_stats.loss, rel=1e-6)
    # Same examples, same global token normalization; only float summation order differs (fp32).
    assert max_relative_difference(big, acc) <= 1e-6


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(setup, tmp_path):
    calls = {"plain": 0, "checkpointed": 0}

    def run(name, extra):
        ctx = setup_run(sft_config(setup, tmp_path / name, extra), "sft")
        mlp = ctx.adapter.decoder_layers[0].mlp
        forward = mlp.forward

        def counted(*args, **kwargs):
            calls[name] += 1
            return forward(*args, **kwargs)

        mlp.forward = counted  # an instance attribute: the recomputation calls it too (hooks it skips)
        try:
            compute_gradients(ctx)
            return {n: p.grad.clone() for n, p in ctx.model.named_parameters() if p.grad is not None}
        finally:
            close_run(ctx)

    plain = run("plain", {"batch_size": 2})
    checkpointed = run("checkpointed", {"batch_size": 2, "model.gradient_checkpointing": True})
    # Layer 0's MLP ran once without checkpointing, and once more (the recomputation in backward) with it.
    assert calls == {"plain": 1, "checkpointed": 2}
    # Recomputation repeats the same float ops: equal up to at most last-bit effects.
    assert max_relative_difference(plain, checkpointed) <= 1e-7


def test_trainable_vision_tower_gets_gradients_through_uncached_embeddings(setup, tmp_path):
    frozen_stats, frozen = gradients(setup, tmp_path / "frozen", {"batch_size": 2})
    ctx = setup_run(
        sft_config(setup, tmp_path / "vision", {"batch_size": 2, "model.train_vision": True}), "sft"
    )
    try:
        assert ctx.store is None  # a trainable tower's embeddings change every step: nothing is cached
        stats = compute_gradients(ctx)
        grads = {n: p.grad.clone() for n, p in ctx.model.named_parameters() if p.grad is not None}
    finally:
        close_run(ctx)
    vision = {n: g for n, g in grads.items() if ".visual." in n}
    assert vision and all(torch.isfinite(g).all() for g in vision.values())
    assert sum(float(g.abs().sum()) for g in vision.values()) > 0
    # The language model sees the same embeddings either way: its gradients are the frozen run's.
    assert stats.loss == pytest.approx(frozen_stats.loss, rel=1e-6)
    assert max_relative_difference(frozen, {n: grads[n] for n in frozen}) <= 1e-6


def test_lora_trains_adapters_only_and_the_final_folder_is_merged(setup, tmp_path):
    from safetensors.torch import load_file

    from longrl.models.loading import load_model
    from longrl.sft.trainer import run_sft

    out = tmp_path / "lora"
    run_sft(sft_config(setup, out, {"run.steps": 2, "model.lora.rank": 2, "model.lora.alpha": 4.0}))
    ckpt = load_file(str(out / "checkpoints" / "step_00000002" / "model.safetensors"))
    # The HF folders are compared as loaded modules (save_pretrained may rename keys on disk).
    final = load_model(out / "final").adapter.model.state_dict()
    initial = load_model(setup["model"]).adapter.model.state_dict()
    assert not any("lora_" in k for k in final) and final.keys() == initial.keys()
    q = "model.language_model.layers.0.self_attn.q_proj"
    a, b = ckpt[f"{q}.lora_A"], ckpt[f"{q}.lora_B"]
    assert float(b.abs().sum()) > 0  # B started at zero: the adapters did train
    torch.testing.assert_close(ckpt[f"{q}.weight"], initial[f"{q}.weight"], atol=0, rtol=0)  # base frozen
    merged = initial[f"{q}.weight"] + (4.0 / 2) * (b @ a)
    torch.testing.assert_close(final[f"{q}.weight"], merged, atol=1e-6, rtol=1e-6)
    for name in (
        "model.language_model.embed_tokens.weight",
        "model.language_model.layers.0.mlp.up_proj.weight",
    ):
        assert torch.equal(final[name], initial[name])  # not a LoRA target: untouched
