"""`longrl bench sp`: sequence-parallel prefill, peak memory and time per rank versus sp, ring and Ulysses.

One long sequence (B = 1) runs through `sp_token_logprobs` (zigzag shard, decoder with SP attention, fused
logprobs, gather) under `sp` local processes (`run_local`), once without grad (old-policy / reference
prefill) and once forward + backward (policy update). Each rank measures its own median time and its peak
extra memory over what it held before the call (the model and the full-length inputs): that is the
activation memory, which should fall about as 1/sp. The table shows the slowest rank's time and the
largest rank's peak, relative to sp = 1.

CPU: the tiny Qwen2.5-VL, 32k tokens (quick: 4k), fp32; peak = resident-set high-water mark (the child
processes use a fixed mmap threshold so freed tensors go back to the OS between measurements). The ranks
share the machine's cores, so CPU times show the overhead of the SP path, not a speed-up. CUDA: a larger
random model in bf16, one GPU per rank (sp larger than the GPU count is skipped); one GPU cannot show NCCL
overlap.
"""

from __future__ import annotations

import ctypes
import os

import torch

from longrl.bench.harness import BenchRow, make_row, peak_memory_bytes, report_header, time_fn

CPU_SEQ_LEN, CPU_QUICK_SEQ_LEN = 32768, 4096
CUDA_SEQ_LEN, CUDA_QUICK_SEQ_LEN = 131072, 16384
# A mid-size random model for GPUs: Qwen2.5-VL-3B's attention shape (16 heads, 2 KV heads, head_dim 128), 4 layers.
CUDA_MODEL = {
    "num_layers": 4,
    "hidden_size": 2048,
    "num_heads": 16,
    "num_kv_heads": 2,
    "intermediate_size": 5504,
}


def _trim_heap() -> None:
    """Return freed heap memory to the OS (glibc), so the next resident-set peak starts from live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _rank_worker(model, seq_len: int, attns: list[str], sp: int, warmup: int, reps: int) -> dict:
    """On every rank: time and peak memory of the no-grad and fwd+bwd SP prefill for each attention mode."""
    import longrl.models as M
    from longrl.models.base import MultimodalInputs
    from longrl.parallel.groups import init_parallel
    from longrl.parallel.sp_prefill import sp_token_logprobs

    state = init_parallel(sp)
    device = state.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    adapter = M.wrap_model(model.to(device=device, dtype=dtype))
    adapter.set_vision_trainable(False)
    g = torch.Generator().manual_seed(0)
    embeds = (torch.randn(1, seq_len, adapter.hidden_size, generator=g) * 0.02).to(device=device, dtype=dtype)
    positions = torch.arange(seq_len, device=device).view(1, 1, -1).expand(3, 1, -1)
    vocab = adapter.lm_head_weight.shape[0]
    targets = torch.randint(10, vocab, (1, seq_len), generator=g).to(device)
    inputs = MultimodalInputs(embeds, positions, torch.ones(1, seq_len, dtype=torch.long, device=device))

    out = {}
    for attn in attns:

        def prefill(attn=attn) -> None:
            with torch.no_grad():
                sp_token_logprobs(adapter, inputs, targets, state, attn=attn)

        def update(attn=attn) -> None:
            adapter.model.zero_grad(set_to_none=True)
            sp_token_logprobs(adapter, inputs, targets, state, attn=attn).sum().backward()

        for phase, fn in (("prefill", prefill), ("fwd+bwd", update)):
            seconds = time_fn(fn, device, warmup=warmup, reps=reps)
            adapter.model.zero_grad(set_to_none=True)
            _trim_heap()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            out[(attn, phase)] = (seconds, peak_memory_bytes(fn, device))
    return out


def _model(device: torch.device):
    import longrl.models as M

    model, _ = M.tiny(seed=0, **(CUDA_MODEL if device.type == "cuda" else {}))
    return model


def run_sp_benchmark(
    device: torch.device,
    *,
    quick: bool,
    seq_len: int | None = None,
    sp_sizes: list[int] | None = None,
    attns: list[str] | None = None,
    timeout_s: float = 3600.0,
) -> dict:
    """Run the SP prefill benchmark and return the report (metadata plus one row per measurement).

    sp_sizes default [1, 2, 4]; attns default ["ring", "ulysses"] (at sp = 1 both are plain attention, so
    sp = 1 is measured once, as the baseline). seq_len default: 32k tokens on CPU (4k quick), 128k on CUDA
    (16k quick).
    """

    sp_sizes = sorted(set(sp_sizes or [1, 2, 4]) | {1})
    attns = attns or ["ring", "ulysses"]
    cuda = device.type == "cuda"
    seq_len = seq_len or ((CUDA_QUICK_SEQ_LEN if quick else CUDA_SEQ_LEN) if cuda else
                          (CPU_QUICK_SEQ_LEN if quick else CPU_SEQ_LEN))  # fmt: skip
    warmup, reps = (1, 2)
    model = _model(device)
    # Freed tensors must leave the resident set between measurements: no dynamic mmap threshold.
    saved_env = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 16)
    try:
        rows = _measure(model, device, seq_len, sp_sizes, attns, warmup, reps, timeout_s)
    finally:
        if saved_env is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved_env
    return {
        **report_header("sp", device, quick),
        "seq_len": seq_len,
        "sp_sizes": sp_sizes,
        "attns": attns,
        "rows": [r.to_dict() for r in rows],
    }


def _measure(model, device: torch.device, seq_len: int, sp_sizes: list[int], attns: list[str], warmup: int,
             reps: int, timeout_s: float) -> list[BenchRow]:  # fmt: skip
    """One run_local per sp size; rows with the slowest rank's time and the largest rank's peak."""
    from longrl.parallel.launch import run_local

    cuda = device.type == "cuda"
    heads = model.config.text_config.num_attention_heads
    cores = os.cpu_count() or 1

    rows: list[BenchRow] = []
    base: dict[str, tuple[float, int | None]] = {}
    shape = f"L={seq_len} B=1 layers={model.config.text_config.num_hidden_layers} H={heads}"
    for sp in sp_sizes:
        if cuda and sp > torch.cuda.device_count():
            rows.append(make_row("sp_prefill", f"sp={sp}", shape, "bfloat16", device, float("nan"),
                                 note=f"skipped: needs {sp} GPUs, {torch.cuda.device_count()} here"))  # fmt: skip
            continue
        # At sp = 1 ring and Ulysses are both plain attention: measure it once, as the baseline.
        modes = attns[:1] if sp == 1 else [m for m in attns if m == "ring" or heads % sp == 0]
        for attn in attns if sp > 1 else []:
            if attn not in modes:
                rows.append(make_row("sp_prefill", f"{attn} sp={sp}", shape, "-", device, float("nan"),
                                     note=f"skipped: {heads} heads are not divisible by sp={sp}"))  # fmt: skip
        threads = max(1, cores // sp)
        results = run_local(_rank_worker, sp, model, seq_len, modes, sp, warmup, reps,
                            timeout_s=timeout_s, threads_per_rank=None if cuda else threads)  # fmt: skip
        for attn in modes:
            for phase in ("prefill", "fwd+bwd"):
                seconds = max(r[(attn, phase)][0] for r in results)
                peaks = [r[(attn, phase)][1] for r in results]
                peak = None if any(p is None for p in peaks) else max(peaks)
                if sp == 1:
                    base[phase] = (seconds, peak)
                ref_s, ref_peak = base[phase]
                ratio = f"; act mem x{peak / ref_peak:.2f} of sp=1" if peak and ref_peak else ""
                rows.append(
                    make_row(
                        f"sp_prefill {phase}",
                        "sp=1 (no SP)" if sp == 1 else f"{attn} sp={sp}",
                        shape,
                        "bfloat16" if cuda else "float32",
                        device,
                        seconds,
                        peak_bytes=peak,
                        baseline_seconds=ref_s,
                        note=f"per rank (max over {sp}){ratio}" + ("" if cuda else f"; {threads} thr/rank"),
                    )
                )
    return rows
