"""token_logprobs implementations: torch reference, vocabulary-chunked torch path and Triton.

See longrl.ops.token_logprobs. With z = logits / temperature (float32 math; float64 inputs stay float64 so
gradcheck works on the torch path):
  logp(label) = z_label - lse(z),   entropy = -sum_k p_k log p_k = lse(z) - sum_k p_k z_k.
The chunked torch path walks the vocabulary in chunks of `chunk_size` columns (and the tokens in row blocks so
one [rows, chunk] float32 buffer stays about 32 MiB), merging per-chunk log-sum-exps and entropies exactly
(see `_online_update_`); the Triton kernels keep a running max instead (see kernels/token_logprobs.py).
Only the inputs and the per-row lse / entropy are saved; the backward recomputes each chunk:
  d/dz_k = g_lp (onehot_k - p_k) - g_ent p_k (log p_k + entropy),   d/dlogits = d/dz / temperature,
  dhidden += dlogits_c @ W_c,  dW_c = dlogits_c.T @ hidden,  dbias_c = dlogits_c.sum(0).
Rows whose label equals ignore_index get logprob 0 and entropy 0 and no gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_LABELS = (torch.int64, torch.int32)
_ROW_ELEMS = 1 << 23  # elements of one [rows, chunk] working buffer (32 MiB in float32)
_alloc = torch.empty  # buffers written block by block go through here (tests swap in a poisoning allocator)

# A tile source: (r0, r1, c0, c1, writable) -> z = logits[r0:r1, c0:c1] / temperature in the compute dtype; a
# fresh tensor the caller may overwrite when `writable`, else possibly a view of the input.
TileFn = Callable[[int, int, int, int, bool], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_labels_shape(op: str, x: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype not in _LABELS:
        raise ValueError(f"{op}: labels must be an int64 (or int32) tensor")
    if x.dim() not in (2, 3):
        raise ValueError(f"{op}: {what} must be [T, *] or [B, L, *], got shape {tuple(x.shape)}")
    if tuple(labels.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"{op}: labels shape {tuple(labels.shape)} must equal {what}.shape[:-1] = {tuple(x.shape[:-1])}"
        )
    if labels.device != x.device:
        raise ValueError(f"{op}: labels are on {labels.device} but {what} is on {x.device}")


def check_args(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Shapes/dtypes/devices of token_logprobs' tensors; raises ValueError."""
    op = "token_logprobs"
    if hidden.dtype not in _FLOATS:
        raise ValueError(f"{op}: hidden must be float32/float16/bfloat16 (or float64), got {hidden.dtype}")
    _check_labels_shape(op, hidden, labels, "hidden")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(
            f"{op}: weight must be [V, H] with V > 0 and H = hidden.shape[-1] = {hidden.shape[-1]}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"{op}: weight dtype {weight.dtype} must equal hidden dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"{op}: weight is on {weight.device} but hidden is on {hidden.device}")
    if bias is not None:
        if bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype or bias.device != weight.device:
            raise ValueError(
                f"{op}: bias must be [V] = [{weight.shape[0]}] with weight's dtype and device, got "
                f"{tuple(bias.shape)} {bias.dtype} on {bias.device}"
            )


def check_logits_args(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Shapes/dtypes/devices of token_logprobs_from_logits' tensors; raises ValueError."""
    op = "token_logprobs_from_logits"
    if logits.dtype not in _FLOATS:
        raise ValueError(f"{op}: logits must be float32/float16/bfloat16 (or float64), got {logits.dtype}")
    _check_labels_shape(op, logits, labels, "logits")
    if logits.shape[-1] == 0:
        raise ValueError(f"{op}: logits have an empty vocabulary dimension")


def _check_call(
    op: str, x: torch.Tensor, labels: torch.Tensor, vocab: int, temperature: float, ignore_index: int,
    chunk_size: int, backend: str,
) -> None:  # fmt: skip
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")
    if backend == "triton" and x.dtype == torch.float64:
        raise ValueError(f"{op}: the triton backend computes in float32; use backend='torch' for float64")
    # One reduction (a device sync on CUDA): an out-of-range label would otherwise give a silent garbage row.
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        example = int(labels[bad][0])
        raise ValueError(
            f"{op}: labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}, got {example}"
        )


# ----------------------------------------------------------------------------------------------------------
# reference (the definition the fused paths are tested against)
# ----------------------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain torch: log_softmax(logits.float() / temperature).gather(labels); materializes [T, V] float32."""
    logp = torch.log_softmax(logits.to(_compute_dtype(logits.dtype)) / temperature, dim=-1)
    ignored = labels == ignore_index
    safe = labels.masked_fill(ignored, 0).long()
    lp = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1).masked_fill(ignored, 0.0)
    if not return_entropy:
        return lp
    p = logp.exp()
    # p log p -> 0 where p == 0 (a -inf logit); masking log p (not the product) keeps the gradient finite.
    ent = -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)
    return lp, ent.masked_fill(ignored, 0.0)


def reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain torch: logits = F.linear(hidden, weight, bias) in the input dtype, then reference_from_logits."""
    return reference_from_logits(
        F.linear(hidden, weight, bias), labels, temperature, return_entropy, ignore_index
    )


# ----------------------------------------------------------------------------------------------------------
# chunked torch path: shared loops
# ----------------------------------------------------------------------------------------------------------


def _row_block(tokens: int, vocab: int, chunk: int) -> int:
    return max(1, min(tokens, _ROW_ELEMS // min(chunk, vocab)))


def _online_update_(
    lse: torch.Tensor, ent: torch.Tensor, zl: torch.Tensor, z: torch.Tensor, local: torch.Tensor,
    want_entropy: bool, neg_inf: bool,
) -> None:  # fmt: skip
    """Fold z [R, C] (overwritten) into the running per-row (lse, entropy, label z) [R], in place.

    `local` is label - c0. Each chunk costs few full passes (on CPU every elementwise op over the tile
    counts): logsumexp alone without entropy; with it, log p_t = z - lse_t, p_t = exp, H_t = -p_t . log p_t
    (a batched dot). Chunks merge exactly: with w_t = exp(lse_t - lse), H = sum_t w_t (H_t - log w_t).
    """
    cols = z.shape[1]
    in_chunk = (local >= 0) & (local < cols)
    picked = z.gather(1, local.clamp(0, cols - 1).unsqueeze(1)).squeeze(1)
    zl.copy_(torch.where(in_chunk, picked, zl))
    lse_t = torch.logsumexp(z, 1)  # -inf for a row whose chunk is all -inf
    lse_new = torch.logaddexp(lse, lse_t)
    if want_entropy:
        logp = z.sub_(lse_t.unsqueeze(1))  # NaN on all -inf rows: masked out below through lse_t = -inf
        p = torch.exp(logp)
        if neg_inf:  # p = 0 where log p = -inf; a finite log p keeps p * log p at 0 instead of NaN
            logp.clamp_(min=torch.finfo(logp.dtype).min)
        ent_t = -torch.bmm(p.unsqueeze(1), logp.unsqueeze(2)).view(-1)

        def weighted(h: torch.Tensor, part_lse: torch.Tensor) -> torch.Tensor:
            log_w = part_lse - lse_new
            return torch.where(torch.isneginf(part_lse), torch.zeros_like(h), torch.exp(log_w) * (h - log_w))

        ent.copy_(weighted(ent, lse) + weighted(ent_t, lse_t))
    lse.copy_(lse_new)


def _chunked_forward(
    tile: TileFn, tokens: int, vocab: int, labels: torch.Tensor, want_entropy: bool, chunk: int,
    dtype: torch.dtype, device: torch.device, neg_inf: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Online log-sum-exp over vocabulary chunks -> (logp of the label, entropy, lse), each [T] of dtype."""
    lse = torch.full((tokens,), float("-inf"), dtype=dtype, device=device)
    ent = torch.zeros(tokens if want_entropy else 0, dtype=dtype, device=device)
    zl = torch.zeros(tokens, dtype=dtype, device=device)
    rows = _row_block(tokens, vocab, chunk)
    for c0 in range(0, vocab, chunk):
        c1 = min(vocab, c0 + chunk)
        for r0 in range(0, tokens, rows):
            r1 = min(tokens, r0 + rows)
            sl = slice(r0, r1)
            z = tile(r0, r1, c0, c1, want_entropy)  # only the entropy terms overwrite the tile
            _online_update_(lse[sl], ent[sl] if want_entropy else ent, zl[sl], z, labels[sl] - c0,
                            want_entropy, neg_inf)  # fmt: skip
    return zl - lse, ent, lse


def _softmax_grad_(
    z: torch.Tensor, local: torch.Tensor, lse: torch.Tensor, ent: torch.Tensor | None,
    g_lp: torch.Tensor | None, g_ent: torch.Tensor | None, temperature: float, neg_inf: bool,
) -> torch.Tensor:  # fmt: skip
    """d(loss)/d(logits) of a tile from z = logits / temperature [R, C] (overwritten; the result may be it).

    dz = p * (a + b * log p) + onehot * g_lp / T with per-row a = -(g_lp + g_ent * H) / T, b = -g_ent / T:
    the temperature and both gradients folded into row factors, so the tile takes four passes.
    """
    inv_t = 1.0 / temperature
    logp = z.sub_(lse.unsqueeze(1))
    p = torch.exp(logp)
    if g_ent is not None:
        row_a = -g_ent * ent if g_lp is None else -(g_lp + g_ent * ent)
        coef = torch.addcmul((row_a * inv_t).unsqueeze(1), logp, (-g_ent * inv_t).unsqueeze(1), out=logp)
        dz = p.mul_(coef)
        if neg_inf:  # p = 0 times an infinite coefficient (log p = -inf) is NaN; the true term is 0
            dz.nan_to_num_(nan=0.0)
    else:
        dz = p.mul_((-g_lp * inv_t).unsqueeze(1))
    if g_lp is not None:
        cols = dz.shape[1]
        in_chunk = (local >= 0) & (local < cols)
        onehot = torch.where(in_chunk, g_lp * inv_t, torch.zeros_like(g_lp)).unsqueeze(1)
        dz.scatter_add_(1, local.clamp(0, cols - 1).unsqueeze(1), onehot)
    return dz


def _linear_tile(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float
) -> TileFn:
    """Logits tiles as the model's lm_head makes them (matmul in the input dtype), then fp32 / temperature."""
    compute = _compute_dtype(hidden.dtype)

    def tile(r0: int, r1: int, c0: int, c1: int, writable: bool = True) -> torch.Tensor:
        h, w = hidden[r0:r1], weight[c0:c1]
        z = torch.addmm(bias[c0:c1], h, w.T) if bias is not None else h @ w.T
        z = z.to(compute)
        return z.div_(temperature) if temperature != 1.0 else z

    return tile


def _logits_tile(logits: torch.Tensor, temperature: float) -> TileFn:
    compute = _compute_dtype(logits.dtype)

    def tile(r0: int, r1: int, c0: int, c1: int, writable: bool = True) -> torch.Tensor:
        z = logits[r0:r1, c0:c1]
        if temperature != 1.0:
            return z.to(compute).div_(temperature) if z.dtype != compute else z / temperature
        return z.to(compute, copy=writable)  # a float32 chunk only, never the whole [T, V]

    return tile


def _rows(t: torch.Tensor | None, r0: int, r1: int) -> torch.Tensor | None:
    return None if t is None else t[r0:r1]


def _backend_grads(
    labels: torch.Tensor, ignore_index: int, g_lp: torch.Tensor | None, g_ent: torch.Tensor | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """Incoming gradients as contiguous [T] tensors of the compute dtype, zero on ignored rows."""
    keep = labels != ignore_index

    def zeroed(g: torch.Tensor | None) -> torch.Tensor | None:
        return None if g is None else torch.where(keep, g.to(dtype), 0.0)

    return zeroed(g_lp), zeroed(g_ent)


def _finish_forward(
    ctx, lp: torch.Tensor, ent: torch.Tensor, lse: torch.Tensor, labels: torch.Tensor, inputs: tuple,
    options: tuple,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The tail both autograd forwards share: zero the ignored rows of lp/ent ([T]; ent becomes empty without
    want_entropy), save inputs + (labels, lse, ent) and the options (temperature, want_entropy, ignore_index,
    chunk, backend, neg_inf) for backward."""
    want_entropy, ignore_index = options[1], options[2]
    ignored = labels == ignore_index
    lp = lp.masked_fill(ignored, 0.0)
    ent = ent.masked_fill(ignored, 0.0) if want_entropy else ent.new_zeros(0)
    ctx.save_for_backward(*inputs, labels, lse, ent)
    ctx.options = options
    ctx.set_materialize_grads(False)
    if not want_entropy:
        ctx.mark_non_differentiable(ent)
    return lp, ent


# ----------------------------------------------------------------------------------------------------------
# from hidden states
# ----------------------------------------------------------------------------------------------------------


class _FromHidden(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, bias, labels, temperature, want_entropy, ignore_index, chunk, backend
    ):  # fmt: skip
        tokens, vocab = hidden.shape[0], weight.shape[0]
        compute = _compute_dtype(hidden.dtype)
        if backend == "triton" and tokens > 0:
            from longrl.kernels import token_logprobs as tk

            lp, ent, lse = tk.hidden_forward(hidden, weight, bias, labels, temperature, want_entropy)
            neg_inf = False
        else:
            # Only a -inf bias (masked tokens) makes -inf logits; the NaN guards cost a pass, so only then.
            neg_inf = bias is not None and bool(torch.isneginf(bias).any())
            tile = _linear_tile(hidden, weight, bias, temperature)
            lp, ent, lse = _chunked_forward(
                tile, tokens, vocab, labels, want_entropy, chunk, compute, hidden.device, neg_inf
            )
        options = (temperature, want_entropy, ignore_index, chunk, backend, neg_inf)
        return _finish_forward(ctx, lp, ent, lse, labels, (hidden, weight, bias), options)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, labels, lse, ent = ctx.saved_tensors
        temperature, want_entropy, ignore_index, chunk, backend, neg_inf = ctx.options
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        compute = _compute_dtype(hidden.dtype)
        g_lp, g_ent = _backend_grads(labels, ignore_index, g_lp, g_ent if want_entropy else None, compute)
        if (g_lp is None and g_ent is None) or not (need_h or need_w or need_b):
            return (None,) * 9
        ent = ent if want_entropy else None
        if backend == "triton":
            from longrl.kernels import token_logprobs as tk

            def dlogits(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
                return tk.hidden_dlogits(
                    hidden[r0:r1], weight[c0:c1], _rows(bias, c0, c1), labels[r0:r1], c0, lse[r0:r1],
                    _rows(ent, r0, r1), _rows(g_lp, r0, r1), _rows(g_ent, r0, r1), temperature,
                )  # fmt: skip
        else:
            tile = _linear_tile(hidden, weight, bias, temperature)

            def dlogits(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
                dz = _softmax_grad_(
                    tile(r0, r1, c0, c1, True), labels[r0:r1] - c0, lse[r0:r1], _rows(ent, r0, r1),
                    _rows(g_lp, r0, r1), _rows(g_ent, r0, r1), temperature, neg_inf,
                )  # fmt: skip
                return dz.to(hidden.dtype)

        dh, dw, db = _hidden_backward(hidden, weight, bias, dlogits, chunk, need_h, need_w, need_b)
        return dh, dw, db, None, None, None, None, None, None


def _hidden_backward(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    dlogits: Callable[[int, int, int, int], torch.Tensor], chunk: int,
    need_h: bool, need_w: bool, need_b: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """Vocabulary chunks outer, row blocks inner; float32 (float64) accumulation across blocks."""
    tokens, hid = hidden.shape
    vocab = weight.shape[0]
    acc = _compute_dtype(hidden.dtype)
    rows = _row_block(tokens, vocab, chunk)
    single_block = rows >= tokens
    if tokens == 0:  # no rows, no gradient (and no block would write dW / dbias)
        zero = [
            torch.zeros_like(t) if need else None
            for t, need in ((hidden, need_h), (weight, need_w), (bias, need_b))
        ]
        return zero[0], zero[1], zero[2]
    dh = torch.zeros(tokens, hid, dtype=acc, device=hidden.device) if need_h else None
    dw = _alloc(vocab, hid, dtype=weight.dtype, device=weight.device) if need_w else None
    db = _alloc(vocab, dtype=bias.dtype, device=bias.device) if need_b else None
    for c0 in range(0, vocab, chunk):
        c1 = min(vocab, c0 + chunk)
        w_c = weight[c0:c1]
        dw_c = (
            None if single_block or not need_w else torch.zeros(c1 - c0, hid, dtype=acc, device=weight.device)
        )
        db_c = torch.zeros(c1 - c0, dtype=acc, device=hidden.device) if need_b else None
        for r0 in range(0, tokens, rows):
            r1 = min(tokens, r0 + rows)
            g = dlogits(r0, r1, c0, c1)  # [R, C] in the input dtype
            if need_h:
                if g.dtype == acc:
                    dh[r0:r1].addmm_(g, w_c)
                else:
                    dh[r0:r1] += g @ w_c
            if need_w:
                if single_block:
                    torch.mm(g.T, hidden[r0:r1], out=dw[c0:c1])
                else:
                    dw_c += g.T @ hidden[r0:r1]
            if need_b:
                db_c += g.sum(0, dtype=acc)
        if dw_c is not None:
            dw[c0:c1] = dw_c
        if need_b:
            db[c0:c1] = db_c
    if dh is not None:
        dh = dh.to(hidden.dtype)
    return dh, dw, db


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    return_entropy: bool,
    ignore_index: int,
    chunk_size: int,
    backend: str,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """See longrl.ops.token_logprobs (arguments already checked by `check_args`)."""
    flat_labels = labels.reshape(-1).to(torch.int64).contiguous()
    _check_call(
        "token_logprobs", hidden, flat_labels, weight.shape[0], temperature, ignore_index, chunk_size, backend
    )
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    lp, ent = _FromHidden.apply(
        flat_hidden, weight, bias, flat_labels, float(temperature), bool(return_entropy), int(ignore_index),
        chunk_size, backend,
    )  # fmt: skip
    lp = lp.reshape(labels.shape)
    return (lp, ent.reshape(labels.shape)) if return_entropy else lp


# ----------------------------------------------------------------------------------------------------------
# from logits
# ----------------------------------------------------------------------------------------------------------


class _FromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, temperature, want_entropy, ignore_index, chunk, backend):
        tokens, vocab = logits.shape
        compute = _compute_dtype(logits.dtype)
        if backend == "triton" and tokens > 0:
            from longrl.kernels import token_logprobs as tk

            lp, ent, lse = tk.logits_forward(logits, labels, temperature, want_entropy)
            neg_inf = False
        else:
            # -inf logits only matter to the entropy terms; the NaN guards cost a pass, so check once.
            neg_inf = want_entropy and bool(torch.isneginf(logits).any())
            tile = _logits_tile(logits, temperature)
            lp, ent, lse = _chunked_forward(
                tile, tokens, vocab, labels, want_entropy, chunk, compute, logits.device, neg_inf
            )
        options = (temperature, want_entropy, ignore_index, chunk, backend, neg_inf)
        return _finish_forward(ctx, lp, ent, lse, labels, (logits,), options)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lp, g_ent):
        logits, labels, lse, ent = ctx.saved_tensors
        temperature, want_entropy, ignore_index, chunk, backend, neg_inf = ctx.options
        compute = _compute_dtype(logits.dtype)
        g_lp, g_ent = _backend_grads(labels, ignore_index, g_lp, g_ent if want_entropy else None, compute)
        if (g_lp is None and g_ent is None) or not ctx.needs_input_grad[0]:
            return (None,) * 7
        ent = ent if want_entropy else None
        if backend == "triton":
            from longrl.kernels import token_logprobs as tk

            grad = tk.logits_backward(logits, labels, lse, ent, g_lp, g_ent, temperature)
            return grad, None, None, None, None, None, None
        tokens, vocab = logits.shape
        grad = _alloc(tokens, vocab, dtype=logits.dtype, device=logits.device)
        tile = _logits_tile(logits, temperature)
        rows = _row_block(tokens, vocab, chunk)
        for c0 in range(0, vocab, chunk):
            c1 = min(vocab, c0 + chunk)
            for r0 in range(0, tokens, rows):
                r1 = min(tokens, r0 + rows)
                grad[r0:r1, c0:c1] = _softmax_grad_(
                    tile(r0, r1, c0, c1, True), labels[r0:r1] - c0, lse[r0:r1], _rows(ent, r0, r1),
                    _rows(g_lp, r0, r1), _rows(g_ent, r0, r1), temperature, neg_inf,
                )  # fmt: skip
        return grad, None, None, None, None, None, None


def token_logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    return_entropy: bool,
    ignore_index: int,
    chunk_size: int,
    backend: str,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """See longrl.ops.token_logprobs_from_logits (arguments already checked by `check_logits_args`)."""
    flat_labels = labels.reshape(-1).to(torch.int64).contiguous()
    op = "token_logprobs_from_logits"
    _check_call(op, logits, flat_labels, logits.shape[-1], temperature, ignore_index, chunk_size, backend)
    flat_logits = logits.reshape(-1, logits.shape[-1])
    lp, ent = _FromLogits.apply(
        flat_logits,
        flat_labels,
        float(temperature),
        bool(return_entropy),
        int(ignore_index),
        chunk_size,
        backend,
    )
    lp = lp.reshape(labels.shape)
    return (lp, ent.reshape(labels.shape)) if return_entropy else lp
