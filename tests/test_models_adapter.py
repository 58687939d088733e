"""Qwen2.5-VL adapter vs the HF model's own forward (reference), fp32 on CPU.

Tolerance: exact (torch.equal, fp32 and bf16) for the adapter path vs HF's forward from input_ids + pixel_values_videos +
video_grid_thw + mm_token_type_ids: both run the same ops in the same order on the same inputs. The
incremental-decoding check uses atol 1e-5 (a 1-token query attends over a KV cache: different kernel
shapes, so float rounding may differ).
"""

from __future__ import annotations

import pytest
import torch
from tiny_model import prompt_batch, random_videos, tiny_model

import longrl.models as M

ONE = [(2, 4, 6)]
# Different lengths and shapes; (2, 10, 12) is wider than one 112-pixel attention window of the vision tower.
SEVERAL = [(2, 4, 6), (4, 2, 4), (1, 4, 4), (2, 10, 12)]


def _hf_logits(model, adapter, ids, mask, pixels, grid, seconds, with_types=True, position_ids=None):
    kwargs = {"mm_token_type_ids": adapter.mm_token_type_ids(ids)} if with_types else {}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return model(
        input_ids=ids,
        attention_mask=mask,
        pixel_values_videos=pixels,
        video_grid_thw=grid,
        second_per_grid_ts=seconds,
        **kwargs,
    ).logits


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("grids", [ONE, SEVERAL], ids=["one_video", "several_videos"])
@torch.no_grad()
def test_adapter_forward_equals_hf_forward(grids, side):
    model, tok = tiny_model()
    adapter = M.wrap_model(model)
    pixels, grid = random_videos(grids, seed=len(grids))
    ids, mask = prompt_batch(tok, grids, side)
    seconds = torch.tensor([1.0, 0.5, 2.0, 1.5][: len(grids)])
    if len(grids) > 1:
        assert mask.sum(1).unique().numel() == len(grids)  # really different lengths, so padding is exercised

    embeds = adapter.encode_video(pixels, grid)
    assert [e.shape[0] for e in embeds] == [adapter.num_video_tokens(g) for g in grids]
    inputs = adapter.build_inputs(ids, mask, embeds, grid, seconds)
    assert inputs.position_ids.shape == (3, *ids.shape)
    # HF's forward from pixels, with the same 3-D positions (see test_positions_* for the positions).
    ref = _hf_logits(model, adapter, ids, mask, pixels, grid, seconds, position_ids=inputs.position_ids)
    logits = adapter.logits(inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask)
    assert torch.equal(logits, ref)

    hidden = adapter.forward(inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask)
    ref_hidden = model.model(
        input_ids=ids,
        attention_mask=mask,
        pixel_values_videos=pixels,
        video_grid_thw=grid,
        second_per_grid_ts=seconds,
        mm_token_type_ids=adapter.mm_token_type_ids(ids),
        position_ids=inputs.position_ids,
    ).last_hidden_state
    assert torch.equal(hidden, ref_hidden)


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_positions_equal_transformers_while_videos_are_short(side):
    """Where transformers 5.x's get_rope_index and Qwen2.5-VL's rule agree (a video's temporal extent within
    its spatial one), the positions are exactly transformers'."""
    model, tok = tiny_model()
    adapter = M.wrap_model(model)
    grids = [(2, 4, 6), (1, 4, 4), (2, 10, 12)]
    _, grid = random_videos(grids, seed=0)
    ids, mask = prompt_batch(tok, grids, side)
    seconds = torch.tensor([0.5, 1.0, 2.0])  # temporal extents 1, 0, 4 <= max(h, w) / 2 = 3, 2, 6
    embeds = [torch.zeros(adapter.num_video_tokens(g), adapter.hidden_size) for g in grids]
    ours = adapter.build_inputs(ids, mask, embeds, grid, seconds)
    theirs, deltas = model.model.get_rope_index(
        ids, mm_token_type_ids=adapter.mm_token_type_ids(ids), video_grid_thw=grid,
        second_per_grid_ts=seconds, attention_mask=mask,
    )  # fmt: skip
    assert torch.equal(ours.position_ids[:, mask.bool()], theirs[:, mask.bool()])
    assert torch.equal(ours.rope_deltas.view(-1), deltas.view(-1))


def test_positions_follow_the_qwen25_rule_on_a_long_video():
    """Hand-computed: text resumes after the video at the video's largest position + 1 (Qwen2.5-VL as
    trained, vLLM), not at its start + max(h, w) / merge (transformers 5.x)."""
    from longrl.models.qwen2_5_vl import VIDEO_TYPE, mrope_positions

    types = torch.tensor([[0, 0, 0] + [VIDEO_TYPE] * 8 + [0, 0]])
    ids = torch.zeros_like(types)
    mask = torch.ones_like(types)
    # t=4 temporal patches, 2x4 patches -> 1x2 merged; 1 s per patch at 2 tokens/s -> interval 2.
    pos, deltas = mrope_positions(
        ids, mask, types, torch.tensor([[4, 2, 4]]), torch.tensor([1.0]), merge_size=2, tokens_per_second=2
    )
    text = [0, 1, 2]
    assert pos[0, 0].tolist() == text + [3, 3, 5, 5, 7, 7, 9, 9] + [10, 11]
    assert pos[1, 0].tolist() == text + [3] * 8 + [10, 11]
    assert pos[2, 0].tolist() == text + [3, 4] * 4 + [10, 11]
    assert deltas.tolist() == [[12 - 13]]
    # Left padding: pads get 0, real tokens keep their positions, and two videos back to back each restart.
    v = VIDEO_TYPE
    types2 = torch.tensor([[0, 0, 0, v, v, v, v, v, v, 0]])
    mask2 = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    pos2, deltas2 = mrope_positions(
        torch.zeros_like(types2), mask2, types2, torch.tensor([[2, 2, 2], [4, 2, 2]]), None,
        merge_size=2, tokens_per_second=1,
    )  # fmt: skip
    # video 1 (2 tokens): t 0, 1 from start 2; video 2 (4 tokens): t 0..3 from start 3 + 1 = 4; text at 7 + 1.
    assert pos2[0, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert pos2[1, 0].tolist() == [0, 0, 1, 2, 2, 4, 4, 4, 4, 8]
    assert deltas2.tolist() == [[9 - 9]]


@torch.no_grad()
def test_adapter_forward_equals_hf_forward_bf16():
    """Same check in bfloat16 (exact too: the two paths run the same ops)."""
    model, tok = tiny_model(fresh=True)
    model = model.to(torch.bfloat16)
    adapter = M.wrap_model(model)
    pixels, grid = random_videos(SEVERAL, seed=9)
    ids, mask = prompt_batch(tok, SEVERAL, "left")
    inputs = adapter.build_inputs(ids, mask, adapter.encode_video(pixels, grid), grid)
    ref = _hf_logits(model, adapter, ids, mask, pixels, grid, None, position_ids=inputs.position_ids)
    logits = adapter.logits(inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask)
    assert logits.dtype == torch.bfloat16 and torch.equal(logits, ref)


@torch.no_grad()
def test_real_tokens_do_not_depend_on_padding_side():
    model, tok = tiny_model()
    adapter = M.wrap_model(model)
    pixels, grid = random_videos(SEVERAL, seed=7)
    embeds = adapter.encode_video(pixels, grid)
    out = {}
    for side in ("left", "right"):
        ids, mask = prompt_batch(tok, SEVERAL, side)
        inp = adapter.build_inputs(ids, mask, embeds, grid)
        logits = adapter.logits(inp.inputs_embeds, inp.position_ids, inp.attention_mask)
        out[side] = (logits[mask.bool()], inp.position_ids[:, mask.bool()], inp.rope_deltas)
    torch.testing.assert_close(out["left"][0], out["right"][0], atol=1e-5, rtol=0)
    assert torch.equal(out["left"][1], out["right"][1])
    assert torch.equal(out["left"][2], out["right"][2])


@torch.no_grad()
def test_without_mm_token_type_ids_hf_silently_uses_1d_positions():
    """The trap: HF's forward without mm_token_type_ids falls back to 1-D positions and gives other logits.

    The adapter's positions really are 3-D (height/width differ from time on video tokens), its output is
    the HF output WITH the type ids, and the HF output WITHOUT them equals the adapter fed 1-D positions.
    """
    model, tok = tiny_model()
    adapter = M.wrap_model(model)
    pixels, grid = random_videos(ONE, seed=3)
    ids, mask = prompt_batch(tok, ONE, "right")
    seconds = torch.tensor([1.0])
    inp = adapter.build_inputs(ids, mask, adapter.encode_video(pixels, grid), grid, seconds)

    video = ids[0] == adapter.video_token_id
    pos = inp.position_ids[:, 0, video]
    assert not torch.equal(pos[0], pos[1]) and not torch.equal(pos[1], pos[2])

    with_types = _hf_logits(model, adapter, ids, mask, pixels, grid, seconds, with_types=True)
    without = _hf_logits(model, adapter, ids, mask, pixels, grid, seconds, with_types=False)
    ours = adapter.logits(inp.inputs_embeds, inp.position_ids, inp.attention_mask)
    assert torch.equal(ours, with_types)
    assert (without - with_types).abs().max() > 1e-3

    flat = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
    assert torch.equal(adapter.logits(inp.inputs_embeds, flat, inp.attention_mask), without)


@torch.no_grad()
def test_encoding_split_by_temporal_patch_equals_whole_video():
    """MR-SP stage 1 relies on this: vision attention never crosses temporal patches, so encoding a video
    in slices of temporal patches and concatenating gives the whole-video embeddings (atol 1e-6)."""
    model, _ = tiny_model()
    adapter = M.wrap_model(model)
    pixels, grid = random_videos([(4, 10, 12)], seed=8)
    whole = adapter.encode_video(pixels, grid)[0]
    rows = 10 * 12  # patches per temporal patch: pixel rows are ordered time-major
    parts = [
        adapter.encode_video(pixels[:rows], torch.tensor([[1, 10, 12]]))[0],
        adapter.encode_video(pixels[rows:], torch.tensor([[3, 10, 12]]))[0],
    ]
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-6, rtol=0)


@torch.no_grad()
def test_second_per_grid_ts_moves_temporal_positions():
    model, tok = tiny_model()
    adapter = M.wrap_model(model)
    pixels, grid = random_videos([(4, 2, 2)], seed=4)
    ids, mask = prompt_batch(tok, [(4, 2, 2)], "right")
    embeds = adapter.encode_video(pixels, grid)
    video = ids[0] == adapter.video_token_id
    t1 = adapter.build_inputs(ids, mask, embeds, grid, [1.0]).position_ids[0, 0, video]
    t2 = adapter.build_inputs(ids, mask, embeds, grid, [2.0]).position_ids[0, 0, video]
    start = t1[0]
    # tokens_per_second=2: one temporal patch = 2 positions per second of video.
    assert torch.equal(t1 - start, torch.tensor([0, 2, 4, 6]))
    assert torch.equal(t2 - start, torch.tensor([0, 4, 8, 12]))


@torch.no_grad()
def test_kv_cache_decoding_matches_full_forward():
    """Prefill a left-padded batch with a KV cache, then one new token per row at `decode_position_ids`:
    equals HF's forward over the whole sequence (same 3-D positions) at the last position."""
    model, tok = tiny_model()
    adapter = M.wrap_model(model)
    grids = SEVERAL[:2]
    pixels, grid = random_videos(grids, seed=5)
    ids, mask = prompt_batch(tok, grids, "left")
    embeds = adapter.encode_video(pixels, grid)
    inp = adapter.build_inputs(ids, mask, embeds, grid)
    cache = adapter.new_kv_cache()
    adapter.forward(inp.inputs_embeds, inp.position_ids, inp.attention_mask, past_key_values=cache)

    new = torch.tensor([[17], [42]])
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    step_pos = adapter.decode_position_ids(full_mask, inp.rope_deltas, 1)
    step = adapter.logits(adapter.embed_tokens(new), step_pos, full_mask, past_key_values=cache)

    full_ids = torch.cat([ids, new], dim=1)
    full_positions = adapter.build_inputs(full_ids, full_mask, embeds, grid).position_ids
    ref = _hf_logits(model, adapter, full_ids, full_mask, pixels, grid, None, position_ids=full_positions)[
        :, -1:
    ]
    torch.testing.assert_close(step, ref, atol=1e-5, rtol=0)


def test_build_inputs_rejects_mismatched_videos():
    model, tok = tiny_model()
    adapter = M.wrap_model(model)
    pixels, grid = random_videos(SEVERAL[:2], seed=6)
    ids, mask = prompt_batch(tok, SEVERAL[:2], "left")
    embeds = adapter.encode_video(pixels, grid)
    with pytest.raises(ValueError, match="video embeddings"):
        adapter.build_inputs(ids, mask, embeds[:1], grid)
    with pytest.raises(ValueError, match="do not match grid"):
        adapter.build_inputs(ids, mask, embeds[::-1], grid)
    with pytest.raises(ValueError, match="pixel_values_videos"):
        adapter.encode_video(pixels[:-1], grid)
    with pytest.raises(ValueError, match="position_ids"):
        adapter.forward(adapter.embed_tokens(ids), torch.zeros_like(ids), mask)


def test_adapter_structure():
    model, _ = tiny_model()
    adapter = M.wrap_model(model)
    assert adapter.family == "qwen2_5_vl"
    assert adapter.lm_head_weight is model.lm_head.weight
    assert adapter.embed_tokens is model.model.language_model.embed_tokens
    assert len(adapter.decoder_layers) == model.config.text_config.num_hidden_layers
    assert adapter.hidden_size == 128 and adapter.dtype == torch.float32
    # decoder_layers + rotary + final norm reproduce forward() (what sequence-parallel code will do).
    ids = torch.tensor([[1, 50, 60, 70, 2]])
    pos = torch.arange(5).view(1, 1, -1).expand(3, 1, -1)
    with torch.no_grad():
        h = adapter.embed_tokens(ids)
        cos_sin = adapter.rotary_emb(h, pos)
        causal = torch.full((5, 5), float("-inf")).triu(1)[None, None]
        for layer in adapter.decoder_layers:
            h = layer(h, attention_mask=causal, position_embeddings=cos_sin)
        h = adapter.final_norm(h)
        ref = adapter.forward(adapter.embed_tokens(ids), pos, None)
    torch.testing.assert_close(h, ref, atol=1e-6, rtol=0)
