"""Benchmark fused token logprobs against log_softmax + gather.

Baselines (what a trainer writes by hand):
  from hidden: logits = hidden @ weight.T (input dtype), log_softmax(logits.float()).gather(labels); its
               backward holds the [T, V] logits, their float32 copy and the float32 log-probs.
  from logits: log_softmax(logits.float()).gather(labels).
Sizes: on CUDA T=8192 tokens, V=152064 (Qwen2.5 vocabulary), H=3584 bf16 (quick: T=2048); the naive forward
holds ~12 GB there. On CPU a scaled-down T=512, V=32768, H=256 float32 (quick: 256 x 8192 x 256), with fewer
timing repetitions. Rows: "fwd" (logprobs only), "fwd+bwd" (gradients w.r.t. hidden and weight, or logits)
and, on CUDA, "fwd+entropy" against a baseline that also computes -(p * logp).sum(-1). bytes_moved is given
only for the memory-bound logits path (read the logits; + write their gradient in fwd+bwd). The targets
(issue 2, GPU): >= 1.5x faster than the baseline with <= 1/8 of its peak memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from longrl import _backend, ops
from longrl.bench.harness import BenchRow, make_row, peak_memory_bytes, time_fn


def _sizes(device: torch.device, quick: bool) -> tuple[int, int, int, torch.dtype]:
    if device.type == "cuda":
        return (2048 if quick else 8192), 152064, 3584, torch.bfloat16
    if quick:
        return 256, 8192, 256, torch.float32
    return 512, 32768, 256, torch.float32


def _naive(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, entropy: bool = False):
    logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1)
    lp = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if not entropy:
        return lp
    return lp, -(logp.exp() * logp).sum(-1)


def _backends(device: torch.device) -> list[str]:
    """Fused implementations to time: Triton where it runs natively (CUDA), and the chunked torch path."""
    names = ["triton"] if device.type == "cuda" and _backend.available("triton", "cuda") else []
    return names + ["torch"]


def _with_grad(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], None]:
    """fwd+bwd of sum(fn(*leaves)) w.r.t. every floating input."""

    def run() -> None:
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        out = fn(*leaves)
        (out[0] if isinstance(out, tuple) else out).float().sum().backward()

    return run


def run(device: torch.device, quick: bool, copy_gbps: float) -> list[BenchRow]:
    """Rows for token_logprobs (from hidden) and token_logprobs_from_logits: fused backends vs baseline."""
    tokens, vocab, hid, dtype = _sizes(device, quick)
    reps = {"warmup": 2, "reps": 7} if device.type == "cuda" else {"warmup": 1, "reps": 3}
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(tokens, hid, generator=gen).to(device, dtype)
    weight = (torch.randn(vocab, hid, generator=gen) * hid**-0.5).to(device, dtype)
    labels = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    shape = f"T={tokens} V={vocab} H={hid}" + ("" if device.type == "cuda" else " (CPU: scaled down)")
    rows: list[BenchRow] = []

    def measure(op: str, impl: str, fn: Callable[[], object], base_s: float | None, note: str, nbytes=None):
        seconds = time_fn(fn, device, **reps)
        peak = peak_memory_bytes(fn, device)
        rows.append(make_row(op, impl, shape, dtype, device, seconds, bytes_moved=nbytes, copy_gbps=copy_gbps,
                             peak_bytes=peak, baseline_seconds=base_s, note=note))  # fmt: skip
        return seconds

    # --- from hidden states -------------------------------------------------------------------------------
    cases = [("fwd", False, False), ("fwd+bwd", True, False)]
    if device.type == "cuda" and not quick:
        cases.append(("fwd+entropy", False, True))
    for label, backward, entropy in cases:
        op = f"token_logprobs {label}"

        def naive_fn(h, w, entropy=entropy):
            return _naive(h, w, labels, entropy)

        base = _with_grad(naive_fn, hidden, weight) if backward else (lambda f=naive_fn: f(hidden, weight))
        base_s = measure(op, "torch-baseline", base, None, "log_softmax(hidden @ W.T).gather")
        for backend in _backends(device):

            def fused_fn(h, w, backend=backend, entropy=entropy):
                return ops.token_logprobs(h, w, labels, return_entropy=entropy, backend=backend)

            fn = _with_grad(fused_fn, hidden, weight) if backward else (lambda f=fused_fn: f(hidden, weight))
            measure(op, backend, fn, base_s, "vocabulary-chunked (chunk 4096)")

    # --- from logits ----------------------------------------------------------------------------------------
    logits = (hidden @ weight.T).contiguous()
    logit_bytes = logits.numel() * logits.element_size()
    for label, backward in (("fwd", False), ("fwd+bwd", True)):
        op = f"token_logprobs_from_logits {label}"
        nbytes = logit_bytes * (2 if backward else 1)

        def naive_logits(x):
            return torch.log_softmax(x.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)

        base = _with_grad(naive_logits, logits) if backward else (lambda: naive_logits(logits))
        base_s = measure(op, "torch-baseline", base, None, "log_softmax(logits.float()).gather", nbytes)
        for backend in _backends(device):

            def fused_logits(x, backend=backend):
                return ops.token_logprobs_from_logits(x, labels, backend=backend)

            fn = _with_grad(fused_logits, logits) if backward else (lambda f=fused_logits: f(logits))
            measure(op, backend, fn, base_s, "no float32 copy of the logits", nbytes)
    return rows
