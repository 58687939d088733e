"""Fused token logprobs (+ entropy): every backend against the plain log_softmax + gather reference.

Reference: `longrl._ops.logprobs.reference` (F.linear in the input dtype, then log_softmax(logits.float() / T)
.gather) and autograd through it. Tolerances (atol and rtol, on values and on gradients; gradients also get
atol scaled by the reference's largest magnitude):
  float32: 1e-5 (helpers.TOLERANCES); float64 gradcheck: torch's defaults.
  "torch" backend, fp16/bf16: TOLERANCES[dtype] against the same-dtype reference (same logits rounding).
  "triton" backend, fp16/bf16: the kernel multiplies the half values exactly and accumulates in float32,
    so it is compared with the reference on the inputs upcast to float32: 1e-4 on values; gradients pass
    through one rounding of d(logits) to the input dtype, so 4 * TOLERANCES[dtype] on them.
Triton runs under TRITON_INTERPRET=1 on CPU (tests/conftest.py), so its shapes stay small.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch
from helpers import TOLERANCES, non_contiguous, poison_, requires_cuda

from longrl import ops
from longrl._ops import logprobs as impl
from longrl.bench.harness import peak_memory_bytes

try:
    from longrl.kernels import token_logprobs as tk
except ImportError:  # no triton
    tk = None

CPU_BACKENDS = [
    "torch",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            tk is None or os.environ.get("TRITON_INTERPRET") != "1", reason="triton interpreter unavailable"
        ),
    ),
]
HALF = (torch.float16, torch.bfloat16)


def make_inputs(
    tokens: int, vocab: int, hid: int, dtype: torch.dtype, seed: int, *, bias: bool = True,
    ignore_every: int = 5, ignore_index: int = -100, device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:  # fmt: skip
    """hidden [T, H], weight [V, H] (logits of std ~2), bias [V] or None, labels [T] with every
    `ignore_every`-th row set to ignore_index."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, hid, generator=g)
    weight = torch.randn(vocab, hid, generator=g) * (2.0 / hid**0.5)
    b = torch.randn(vocab, generator=g) * 0.5 if bias else None
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    if ignore_every:
        labels[::ignore_every] = ignore_index
    to = dict(dtype=dtype, device=device)
    return hidden.to(**to), weight.to(**to), None if b is None else b.to(**to), labels.to(device)


def seed_of(*parts: object) -> int:
    """A per-test seed that is stable across processes (unlike hash() of strings)."""
    return zlib.crc32(repr(parts).encode())


def leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone().requires_grad_(True)


def loss_of(lp: torch.Tensor, ent: torch.Tensor, which: str, seed: int) -> torch.Tensor:
    """A loss with distinct per-token weights (so a wrong row shows), on logprobs, entropy or both."""
    g = torch.Generator().manual_seed(seed + 1)
    w_lp = torch.randn(lp.shape, generator=g).to(lp.device, lp.dtype)
    w_ent = torch.randn(ent.shape, generator=g).to(ent.device, ent.dtype)
    return {
        "lp": (w_lp * lp).sum(),
        "ent": (w_ent * ent).sum(),
        "both": (w_lp * lp).sum() + (w_ent * ent).sum(),
    }[which]


def assert_close(
    got: torch.Tensor, want: torch.Tensor, tol: float, what: str, scale_atol: bool = False
) -> None:
    got, want = got.double(), want.double()
    atol = tol * max(1.0, want.abs().max().item()) if scale_atol else tol
    torch.testing.assert_close(got, want, atol=atol, rtol=tol, msg=lambda m: f"{what}: {m}")


def reference_for(backend: str, hidden, weight, bias):
    """The reference inputs a backend is defined against (see the module docstring)."""
    if backend == "triton" and hidden.dtype in HALF:
        return hidden.float(), weight.float(), None if bias is None else bias.float()
    return hidden, weight, bias


def value_tol(backend: str, dtype: torch.dtype) -> float:
    if backend == "triton" and dtype in HALF:
        return 1e-4
    return TOLERANCES[dtype]["atol"]


def grad_tol(backend: str, dtype: torch.dtype) -> float:
    return 4 * TOLERANCES[dtype]["atol"] if dtype in HALF else TOLERANCES[dtype]["atol"]


# ----------------------------------------------------------------------------------------------------------
# forward values
# ----------------------------------------------------------------------------------------------------------

FORWARD_CASES = [
    # tokens, vocab, hidden, chunk, bias, temperature
    (37, 1003, 48, 100, True, 1.0),  # odd everything; chunk does not divide V
    (37, 1000, 48, 4096, False, 0.7),  # chunk > V
    (16, 1003, 64, 256, True, 1.3),
    (3, 17, 16, 5, False, 1.0),  # tiny: more chunks than rows
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: "x".join(map(str, c)))
def test_forward_matches_reference(backend: str, dtype: torch.dtype, case: tuple) -> None:
    tokens, vocab, hid, chunk, has_bias, temp = case
    seed = seed_of(backend, dtype, case)
    hidden, weight, bias, labels = make_inputs(tokens, vocab, hid, dtype, seed, bias=has_bias)
    lp, ent = ops.token_logprobs(
        hidden,
        weight,
        labels,
        bias=bias,
        temperature=temp,
        return_entropy=True,
        chunk_size=chunk,
        backend=backend,
    )
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == ent.shape == labels.shape
    ref_h, ref_w, ref_b = reference_for(backend, hidden, weight, bias)
    ref_lp, ref_ent = impl.reference(ref_h, ref_w, labels, ref_b, temp, True)
    tol = value_tol(backend, dtype)
    assert_close(lp, ref_lp, tol, "logprobs")
    assert_close(ent, ref_ent, tol, "entropy")
    if dtype in HALF:  # every backend is also within the dtype's tolerance of the same-dtype reference
        same_lp, same_ent = impl.reference(hidden, weight, labels, bias, temp, True)
        assert_close(lp, same_lp, TOLERANCES[dtype]["atol"], "logprobs vs same-dtype reference")
        assert_close(ent, same_ent, TOLERANCES[dtype]["atol"], "entropy vs same-dtype reference")
    # Without entropy: a single tensor, the same logprobs.
    lp_only = ops.token_logprobs(
        hidden, weight, labels, bias=bias, temperature=temp, chunk_size=chunk, backend=backend
    )
    assert isinstance(lp_only, torch.Tensor)
    torch.testing.assert_close(lp_only, lp, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_from_logits_matches_reference(backend: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(37, 1003, generator=g) * 3).to(dtype)
    labels = torch.randint(0, 1003, (37,), generator=g)
    labels[::4] = -100
    for chunk, temp in ((100, 1.0), (4096, 0.6)):
        lp, ent = ops.token_logprobs_from_logits(
            logits, labels, temperature=temp, return_entropy=True, chunk_size=chunk, backend=backend
        )
        ref_lp, ref_ent = impl.reference_from_logits(logits, labels, temp, True)
        # Both paths read the same logits and compute in float32: float32 tolerance for every dtype.
        assert_close(lp, ref_lp, 1e-5, f"logprobs chunk={chunk}")
        assert_close(ent, ref_ent, 1e-5, f"entropy chunk={chunk}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batched_and_non_contiguous_inputs(backend: str) -> None:
    hidden, weight, bias, labels = make_inputs(2 * 13, 301, 32, torch.float32, 3)
    hidden_b = non_contiguous(hidden.reshape(2, 13, 32))  # [B, L, H], every other element of a wider tensor
    labels_b = labels.reshape(2, 13)
    weight_t = weight.t().contiguous().t()  # [V, H] view with strides (1, V)
    assert not hidden_b.is_contiguous() and not weight_t.is_contiguous()
    h, w, b = leaf(hidden_b), leaf(weight_t), leaf(bias)
    lp, ent = ops.token_logprobs(h, w, labels_b, bias=b, return_entropy=True, chunk_size=64, backend=backend)
    assert lp.shape == ent.shape == (2, 13)
    hr, wr, br = leaf(hidden_b), leaf(weight), leaf(bias)
    ref_lp, ref_ent = impl.reference(hr, wr, labels_b, br, 1.0, True)
    assert_close(lp, ref_lp, 1e-5, "logprobs")
    assert_close(ent, ref_ent, 1e-5, "entropy")
    loss_of(lp, ent, "both", 0).backward()
    loss_of(ref_lp, ref_ent, "both", 0).backward()
    for got, want, name in ((h, hr, "hidden"), (w, wr, "weight"), (b, br, "bias")):
        assert got.grad.shape == want.grad.shape
        assert_close(got.grad, want.grad, 1e-5, f"d{name}", scale_atol=True)

    logits = non_contiguous(torch.randn(2, 13, 301, generator=torch.Generator().manual_seed(4)))
    x, xr = leaf(logits), leaf(logits)
    lp, ent = ops.token_logprobs_from_logits(x, labels_b, return_entropy=True, chunk_size=64, backend=backend)
    ref_lp, ref_ent = impl.reference_from_logits(xr, labels_b, 1.0, True)
    assert_close(lp, ref_lp, 1e-5, "logprobs from logits")
    loss_of(lp, ent, "both", 1).backward()
    loss_of(ref_lp, ref_ent, "both", 1).backward()
    assert_close(x.grad, xr.grad, 1e-5, "dlogits", scale_atol=True)


# ----------------------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------------------

GRAD_CASES = [
    # tokens, vocab, hidden, chunk, bias, temperature, loss
    (37, 1003, 48, 300, True, 0.7, "both"),
    (37, 1003, 48, 4096, False, 1.0, "lp"),
    (20, 500, 32, 128, True, 1.0, "ent"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "x".join(map(str, c)))
def test_gradients_match_reference(backend: str, dtype: torch.dtype, case: tuple) -> None:
    tokens, vocab, hid, chunk, has_bias, temp, which = case
    seed = seed_of(backend, dtype, case, "grad")
    hidden, weight, bias, labels = make_inputs(tokens, vocab, hid, dtype, seed, bias=has_bias)
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    lp, ent = ops.token_logprobs(
        h, w, labels, bias=b, temperature=temp, return_entropy=True, chunk_size=chunk, backend=backend
    )
    loss_of(lp, ent, which, seed).backward()
    hr, wr, br = (leaf(t) for t in reference_for(backend, hidden, weight, bias))
    ref_lp, ref_ent = impl.reference(hr, wr, labels, br, temp, True)
    loss_of(ref_lp, ref_ent, which, seed).backward()
    tol = grad_tol(backend, dtype)
    assert h.grad.dtype == dtype and w.grad.dtype == dtype
    assert_close(h.grad, hr.grad, tol, "dhidden", scale_atol=True)
    assert_close(w.grad, wr.grad, tol, "dweight", scale_atol=True)
    if has_bias:
        assert_close(b.grad, br.grad, tol, "dbias", scale_atol=True)
    ignored = labels == -100
    assert torch.all(h.grad[ignored] == 0), "ignored rows must get no gradient"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_from_logits_gradients(backend: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(11)
    logits = (torch.randn(29, 777, generator=g) * 3).to(dtype)
    labels = torch.randint(0, 777, (29,), generator=g)
    labels[1::3] = -100
    for which, chunk, temp in (("both", 100, 0.8), ("lp", 4096, 1.0), ("ent", 250, 1.0)):
        x, xr = leaf(logits), leaf(logits)
        lp, ent = ops.token_logprobs_from_logits(
            x, labels, temperature=temp, return_entropy=True, chunk_size=chunk, backend=backend
        )
        loss_of(lp, ent, which, 5).backward()
        ref_lp, ref_ent = impl.reference_from_logits(xr, labels, temp, True)
        loss_of(ref_lp, ref_ent, which, 5).backward()
        assert x.grad.dtype == dtype
        # d(logits) is computed in float32 on both sides and rounded once to the dtype.
        assert_close(x.grad, xr.grad, TOLERANCES[dtype]["atol"], f"dlogits ({which})", scale_atol=True)
        assert torch.all(x.grad[labels == -100] == 0)


@pytest.mark.parametrize("rows_per_block", [None, 2], ids=["one-row-block", "row-blocks-of-2"])
def test_gradcheck_float64_torch(monkeypatch: pytest.MonkeyPatch, rows_per_block: int | None) -> None:
    if rows_per_block is not None:  # force the row-blocked loops (float64 accumulation across blocks)
        monkeypatch.setattr(impl, "_ROW_ELEMS", rows_per_block * 4)
    hidden, weight, bias, labels = make_inputs(5, 13, 6, torch.float64, 21, ignore_every=3)

    def fn(h, w, b):
        return ops.token_logprobs(
            h, w, labels, bias=b, temperature=0.7, return_entropy=True, chunk_size=4, backend="torch"
        )

    lp, ent = fn(hidden, weight, bias)
    assert lp.dtype == ent.dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (leaf(hidden), leaf(weight), leaf(bias)))

    logits = torch.randn(5, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def fn_logits(x):
        return ops.token_logprobs_from_logits(
            x, labels, temperature=1.3, return_entropy=True, chunk_size=4, backend="torch"
        )

    assert torch.autograd.gradcheck(fn_logits, (leaf(logits),))


def test_only_some_inputs_need_grad() -> None:
    hidden, weight, bias, labels = make_inputs(9, 50, 8, torch.float32, 8)
    h = leaf(hidden)
    lp = ops.token_logprobs(h, weight, labels, bias=bias, chunk_size=16, backend="torch")
    lp.sum().backward()
    hr = leaf(hidden)
    impl.reference(hr, weight, labels, bias).sum().backward()
    assert_close(h.grad, hr.grad, 1e-5, "dhidden", scale_atol=True)
    with torch.no_grad():
        out = ops.token_logprobs(leaf(hidden), weight, labels, chunk_size=16, backend="torch")
    assert not out.requires_grad


# ----------------------------------------------------------------------------------------------------------
# ignore_index, -inf logits, poisoned buffers
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ignore_index(backend: str) -> None:
    # An ignore_index inside the vocabulary: rows labelled 0 are ignored, not looked up.
    hidden, weight, bias, labels = make_inputs(21, 130, 16, torch.float32, 9, ignore_every=4, ignore_index=0)
    h = leaf(hidden)
    lp, ent = ops.token_logprobs(
        h, weight, labels, bias=bias, return_entropy=True, ignore_index=0, chunk_size=50, backend=backend
    )
    ignored = labels == 0
    assert ignored.sum() >= 5
    assert torch.all(lp[ignored] == 0) and torch.all(ent[ignored] == 0)
    ref_lp, ref_ent = impl.reference(hidden, weight, labels, bias, 1.0, True, ignore_index=0)
    assert_close(lp, ref_lp, 1e-5, "logprobs")
    assert_close(ent, ref_ent, 1e-5, "entropy")
    (lp.sum() + ent.sum()).backward()
    assert torch.all(h.grad[ignored] == 0) and torch.all(h.grad[~ignored].abs().sum(-1) > 0)

    # Every row ignored: zeros and zero gradients, no NaN.
    h = leaf(hidden)
    all_ignored = torch.full_like(labels, -100)
    lp, ent = ops.token_logprobs(h, weight, all_ignored, return_entropy=True, chunk_size=50, backend=backend)
    assert torch.all(lp == 0) and torch.all(ent == 0)
    (lp.sum() + ent.sum()).backward()
    assert torch.all(h.grad == 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_masked_vocabulary_with_neg_inf_bias(backend: str) -> None:
    """A bias of -inf (tokens masked out) gives p = 0 there: finite logprobs, entropy and gradients."""
    hidden, weight, bias, labels = make_inputs(19, 200, 16, torch.float32, 12)
    bias[::3] = float("-inf")
    # The leading 130 tokens masked: whole chunks / a whole Triton vocabulary slice start at a max of -inf.
    bias[:130] = float("-inf")
    labels = torch.where(labels == -100, labels, 130 + labels % 70)
    labels[labels % 3 == 0] = 131  # never a masked label
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    lp, ent = ops.token_logprobs(h, w, labels, bias=b, return_entropy=True, chunk_size=64, backend=backend)
    hr, wr, br = leaf(hidden), leaf(weight), leaf(bias)
    ref_lp, ref_ent = impl.reference(hr, wr, labels, br, 1.0, True)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    assert_close(lp, ref_lp, 1e-5, "logprobs")
    assert_close(ent, ref_ent, 1e-5, "entropy")
    loss_of(lp, ent, "both", 3).backward()
    loss_of(ref_lp, ref_ent, "both", 3).backward()
    for got, want, name in ((h, hr, "hidden"), (w, wr, "weight")):
        assert torch.isfinite(got.grad).all()
        assert_close(got.grad, want.grad, 1e-5, f"d{name}", scale_atol=True)
    assert torch.all(w.grad[:130] == 0), "masked tokens get no weight gradient"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_buffers_fully_written(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer filled block by block (dW, dbias, d(logits), Triton's statistics) starts as NaN; rows go in
    blocks of 16 here so the row-blocked loops (float32 dW accumulation across blocks) run too."""

    def poisoned(*size, **kw):
        return poison_(torch.empty(*size, **kw))

    monkeypatch.setattr(impl, "_alloc", poisoned)
    monkeypatch.setattr(impl, "_ROW_ELEMS", 16 * 300)  # chunk 300 -> 16 rows per block, 3 blocks for T=37
    if tk is not None:
        monkeypatch.setattr(tk, "_alloc", poisoned)
    hidden, weight, bias, labels = make_inputs(37, 1003, 48, torch.float32, 13)
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    lp, ent = ops.token_logprobs(h, w, labels, bias=b, return_entropy=True, chunk_size=300, backend=backend)
    loss_of(lp, ent, "both", 0).backward()
    for t in (lp, ent, h.grad, w.grad, b.grad):
        assert torch.isfinite(t).all()
    hr, wr, br = leaf(hidden), leaf(weight), leaf(bias)
    ref_lp, ref_ent = impl.reference(hr, wr, labels, br, 1.0, True)
    loss_of(ref_lp, ref_ent, "both", 0).backward()
    assert_close(w.grad, wr.grad, 1e-5, "dweight", scale_atol=True)
    assert_close(b.grad, br.grad, 1e-5, "dbias", scale_atol=True)

    x = leaf(torch.randn(37, 1003, generator=torch.Generator().manual_seed(1)))
    lp, ent = ops.token_logprobs_from_logits(x, labels, return_entropy=True, chunk_size=300, backend=backend)
    loss_of(lp, ent, "both", 0).backward()
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all() and torch.isfinite(x.grad).all()


@pytest.mark.skipif(
    tk is None or os.environ.get("TRITON_INTERPRET") != "1", reason="triton interpreter unavailable"
)
@pytest.mark.parametrize("splits", [1, 3, 4])
def test_triton_vocabulary_slices_merge(splits: int) -> None:
    """The forward's per-slice statistics merge exactly, including slices left empty (V=200, 4 slices)."""
    hidden, weight, bias, labels = make_inputs(21, 200, 32, torch.float32, 14, ignore_every=0)
    lp, ent, lse = tk.hidden_forward(hidden, weight, bias, labels, 0.9, True, num_splits=splits)
    ref_lp, ref_ent = impl.reference(hidden, weight, labels, bias, 0.9, True)
    ref_lse = torch.logsumexp(torch.nn.functional.linear(hidden, weight, bias) / 0.9, dim=-1)
    assert_close(lp, ref_lp, 1e-5, "logprobs")
    assert_close(ent, ref_ent, 1e-5, "entropy")
    assert_close(lse, ref_lse, 1e-5, "lse")


# ----------------------------------------------------------------------------------------------------------
# memory: the chunked path never holds a [T, V] float32 tensor
# ----------------------------------------------------------------------------------------------------------


def test_torch_path_memory_stays_below_tv() -> None:
    tokens, vocab, hid = 1024, 65536, 32
    tv_bytes = tokens * vocab * 4  # 256 MiB
    hidden, weight, bias, labels = make_inputs(tokens, vocab, hid, torch.float32, 15)
    device = torch.device("cpu")

    def fused() -> None:
        h, w = leaf(hidden), leaf(weight)
        lp, ent = ops.token_logprobs(h, w, labels, return_entropy=True, chunk_size=512, backend="torch")
        (lp.sum() + ent.sum()).backward()

    def naive() -> None:
        impl.reference(hidden, weight, labels)

    naive_peak = peak_memory_bytes(naive, device)
    if naive_peak is None:
        pytest.skip("no way to measure peak memory on this platform")
    # The meter works: the reference holds [T, V] fp32 logits and log-probs.
    assert naive_peak >= tv_bytes, f"meter saw only {naive_peak / 2**20:.0f} MiB for the naive path"
    fused_peak = peak_memory_bytes(fused, device)
    assert fused_peak < tv_bytes / 4, f"fused path peaked at {fused_peak / 2**20:.0f} MiB (T*V*4 = 256 MiB)"


# ----------------------------------------------------------------------------------------------------------
# argument errors
# ----------------------------------------------------------------------------------------------------------


def test_bad_arguments_raise() -> None:
    hidden, weight, bias, labels = make_inputs(6, 20, 8, torch.float32, 16)
    bad_calls = [
        lambda: ops.token_logprobs(hidden[0], weight, labels[0]),  # 1-D hidden
        lambda: ops.token_logprobs(hidden, weight[:, :4], labels),  # H mismatch
        lambda: ops.token_logprobs(hidden, weight.half(), labels),  # dtype mismatch
        lambda: ops.token_logprobs(hidden.int(), weight.int(), labels),  # not floating
        lambda: ops.token_logprobs(hidden, weight, labels[:5]),  # labels shape
        lambda: ops.token_logprobs(hidden, weight, labels.float()),  # labels dtype
        lambda: ops.token_logprobs(hidden, weight, labels, bias=bias[:5]),  # bias shape
        lambda: ops.token_logprobs(hidden, weight, labels, bias=bias.half()),  # bias dtype
        lambda: ops.token_logprobs(hidden, weight.to("meta"), labels),  # device
        lambda: ops.token_logprobs(hidden, weight, torch.full_like(labels, 20)),  # label out of range
        lambda: ops.token_logprobs(hidden, weight, torch.full_like(labels, -1)),  # negative label
        lambda: ops.token_logprobs(hidden, weight, labels, temperature=0.0),
        lambda: ops.token_logprobs(hidden, weight, labels, chunk_size=0),
        lambda: ops.token_logprobs(hidden, weight[:0], labels),  # empty vocabulary
        lambda: ops.token_logprobs_from_logits(hidden, labels.unsqueeze(0)),  # labels shape
        lambda: ops.token_logprobs_from_logits(hidden, torch.full_like(labels, 8)),  # out of range
        lambda: ops.token_logprobs_from_logits(hidden[:, :0], labels),  # empty vocabulary
    ]
    if tk is not None and os.environ.get("TRITON_INTERPRET") == "1":
        bad_calls.append(
            lambda: ops.token_logprobs(hidden.double(), weight.double(), labels, backend="triton")
        )
    for i, call in enumerate(bad_calls):
        try:
            call()
        except ValueError:
            continue
        pytest.fail(f"bad call #{i} did not raise ValueError")


def test_empty_batch() -> None:
    hidden, weight, _, _ = make_inputs(0, 20, 8, torch.float32, 17)
    h, w = leaf(hidden), leaf(weight)
    lp, ent = ops.token_logprobs(h, w, torch.zeros(0, dtype=torch.long), return_entropy=True, backend="torch")
    assert lp.shape == ent.shape == (0,)
    (lp.sum() + ent.sum()).backward()
    assert h.grad.shape == (0, 8) and torch.all(w.grad == 0)


# ----------------------------------------------------------------------------------------------------------
# GPU code paths: compiled here for sm_80/sm_90 (no GPU needed), run on CUDA where there is one
# ----------------------------------------------------------------------------------------------------------

_COMPILE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from longrl.kernels import token_logprobs as k

    def build(fn, args, consts, arch, warps, stages):
        # Mimic launch-time specialization: unit ints become constants, pointers are 16-byte aligned.
        sig, constexprs, attrs = {}, dict(consts), {}
        for i, name in enumerate(fn.arg_names):
            if name in consts:
                sig[name] = "constexpr"
            elif isinstance(args[name], str):
                sig[name], attrs[(i,)] = args[name], [["tt.divisibility", 16]]
            elif isinstance(args[name], float):
                sig[name] = "fp32"
            elif args[name] == 1:
                sig[name], constexprs[name] = "constexpr", 1
            else:
                sig[name] = "i32"
        src = ASTSource(fn, sig, constexprs, attrs)
        options = {"num_warps": warps, "num_stages": stages}
        triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)

    T, V, H, p = 8192, 152064, 3584, "*bf16"
    f = "*fp32"
    fwd = dict(h_ptr=p, w_ptr=p, b_ptr=p, labels_ptr="*i64", m_ptr=f, s_ptr=f, a_ptr=f, zl_ptr=f,
               T=T, V=V, H=H, stride_ht=H, stride_hh=1, stride_wv=H, stride_wh=1, inv_temp=1.0, num_splits=3)
    bwd = dict(h_ptr=p, w_ptr=p, b_ptr=p, labels_ptr="*i64", lse_ptr=f, ent_ptr=f, g_lp_ptr=f, g_ent_ptr=f,
               out_ptr=p, R=T, C=4096, H=H, col_base=4096, stride_ht=H, stride_hh=1, stride_wv=H, stride_wh=1,
               stride_or=4096, inv_temp=1.0)
    lfwd = dict(x_ptr=p, labels_ptr="*i64", lp_ptr=f, ent_ptr=f, lse_ptr=f, T=T, V=V,
                stride_xt=V, stride_xv=1, inv_temp=1.0)
    lbwd = dict(x_ptr=p, labels_ptr="*i64", lse_ptr=f, ent_ptr=f, g_lp_ptr=f, g_ent_ptr=f, out_ptr=p,
                T=T, V=V, stride_xt=V, stride_xv=1, inv_temp=1.0)
    tile = k._TILES[0]
    for arch in (80, 90):
        flags = dict(HAS_BIAS=True, UPCAST=False, IEEE=False, **tile.kwargs)
        warps, stages = tile.num_warps, tile.num_stages
        build(k._hidden_fwd_kernel, fwd, dict(WANT_ENTROPY=True, **flags), arch, warps, stages)
        grads = dict(HAS_G_LP=True, HAS_G_ENT=True, **flags)
        build(k._hidden_dlogits_kernel, bwd, grads, arch, warps, stages)
        row = dict(k._logits_block(V))
        warps = row.pop("num_warps")
        build(k._logits_fwd_kernel, lfwd, dict(WANT_ENTROPY=True, **row), arch, warps, 2)
        build(k._logits_bwd_kernel, lbwd, dict(HAS_G_LP=True, HAS_G_ENT=True, **row), arch, warps, 2)
    print("compiled")
    """
)


@pytest.mark.skipif(tk is None, reason="triton not installed")
def test_triton_kernels_compile_for_gpu() -> None:
    """The GPU code path (bf16 tl.dot, no interpreter up-cast) compiles to cubin for sm_80 and sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    if proc.returncode != 0 and ("ptxas" in proc.stderr and "not found" in proc.stderr.lower()):
        pytest.skip("triton has no ptxas here")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_reference(backend: str, dtype: torch.dtype) -> None:
    tokens, vocab, hid = 1000, 5003, 256
    hidden, weight, bias, labels = make_inputs(tokens, vocab, hid, dtype, 18, device="cuda")
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    lp, ent = ops.token_logprobs(h, w, labels, bias=b, temperature=0.8, return_entropy=True, chunk_size=1024,
                                 backend=backend)  # fmt: skip
    loss_of(lp, ent, "both", 0).backward()
    hr, wr, br = (leaf(t) for t in reference_for(backend, hidden, weight, bias))
    ref_lp, ref_ent = impl.reference(hr, wr, labels, br, 0.8, True)
    loss_of(ref_lp, ref_ent, "both", 0).backward()
    # cuBLAS may use reduced-precision reductions for the reference's fp32 matmul too: 1e-4 for float32.
    tol = max(value_tol(backend, dtype), 1e-4)
    assert_close(lp, ref_lp, tol, "logprobs")
    assert_close(ent, ref_ent, tol, "entropy")
    gtol = max(grad_tol(backend, dtype), 1e-4)
    for got, want, name in ((h, hr, "hidden"), (w, wr, "weight"), (b, br, "bias")):
        assert_close(got.grad, want.grad, gtol, f"d{name}", scale_atol=True)

    logits = torch.randn(300, 50257, device="cuda").to(dtype)
    x, xr = leaf(logits), leaf(logits)
    lp, ent = ops.token_logprobs_from_logits(x, labels[:300], return_entropy=True, backend=backend)
    ref_lp, ref_ent = impl.reference_from_logits(xr, labels[:300], 1.0, True)
    assert_close(lp, ref_lp, 1e-5, "logprobs from logits")
    assert_close(ent, ref_ent, 1e-4, "entropy from logits")
    loss_of(lp, ent, "both", 1).backward()
    loss_of(ref_lp, ref_ent, "both", 1).backward()
    assert_close(x.grad, xr.grad, TOLERANCES[dtype]["atol"], "dlogits", scale_atol=True)
