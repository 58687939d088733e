"""`longrl bench ...`: microbenchmarks printed as a table and optionally written as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from longrl.errors import ConfigError

app = typer.Typer(help="Microbenchmarks (tables + JSON). Benchmarks measure; they never pass or fail.",
                  no_args_is_help=True)  # fmt: skip


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name}: not a device name ({err})") from None


@app.command("kernels")
def kernels(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON to this file.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes and few repetitions (seconds, not minutes).")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    only: Annotated[str | None, typer.Option(help="Comma-separated groups: pad_and_shard,attention,embedding_cache,logprobs.")] = None,
) -> None:  # fmt: skip
    """Every longrl op against its plain-torch baseline: median time, GB/s, % of copy bandwidth, peak memory."""
    from longrl.bench.kernels import GROUPS, run_kernel_benchmarks
    from longrl.bench.report import print_report, write_json

    groups = [g.strip() for g in only.split(",")] if only else None
    if groups and any(g not in GROUPS for g in groups):
        raise ConfigError(f"--only {only}: unknown group; choose from {', '.join(GROUPS)}")
    report = run_kernel_benchmarks(_device(device), quick=quick, groups=groups)
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)
        print(f"wrote {json_path}")


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text}: expected comma-separated integers, e.g. 1,2,4") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"{flag} {text}: expected positive integers, e.g. 1,2,4")
    return values


@app.command("sp")
def sp(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON to this file.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A shorter sequence (CPU 4k, CUDA 16k tokens) and fewer repetitions.")] = False,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Tokens in the sequence (default: CPU 32k, CUDA 128k; quick 4k / 16k).")] = None,
    sp_sizes: Annotated[str, typer.Option("--sp", help="Comma-separated sp sizes to compare (sp=1, the baseline, is always run).")] = "1,2,4",
    attn: Annotated[str, typer.Option("--attn", help="Comma-separated attention modes: ring,ulysses.")] = "ring,ulysses",
    device: Annotated[str, typer.Option(help="auto (CUDA when present) or cpu; ranks use one GPU each on CUDA.")] = "auto",
) -> None:  # fmt: skip
    """Sequence-parallel prefill (no-grad and fwd+bwd) per rank vs sp: time and peak (activation) memory."""
    from longrl.bench.report import print_report, write_json
    from longrl.bench.sp import run_sp_benchmark
    from longrl.parallel.sp_attention import SP_ATTN_MODES

    sizes = _int_list("--sp", sp_sizes)
    modes = [m.strip() for m in attn.split(",") if m.strip()]
    if not modes or any(m not in SP_ATTN_MODES for m in modes):
        raise ConfigError(f"--attn {attn}: choose from {', '.join(SP_ATTN_MODES)}")
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"--seq-len {seq_len}: must be a positive number of tokens")
    dev = _device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: the sp benchmark runs on cpu or cuda")
    report = run_sp_benchmark(dev, quick=quick, seq_len=seq_len, sp_sizes=sizes, attns=modes)
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)
        print(f"wrote {json_path}")


@app.command("rl-step")
def rl_step(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON to this file.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer frames, responses and repetitions (about a minute on CPU).")] = False,
    frames: Annotated[str | None, typer.Option("--frames", help="Comma-separated frame counts (default: CPU 32,64,128; CUDA 128,256,512).")] = None,
    sp: Annotated[int, typer.Option("--sp", help="Also run MR-SP with this many sequence-parallel processes (1 = only sp=1).")] = 1,
    device: Annotated[str, typer.Option(help="auto (CUDA when present) or cpu; ranks use one GPU each on CUDA.")] = "auto",
) -> None:  # fmt: skip
    """One GRPO step, MR-SP (encode once + cache + SP prefill) vs vanilla (re-encode everywhere, no SP)."""
    from longrl.bench.report import print_report, write_json
    from longrl.bench.rl_step import run_rl_step_benchmark

    counts = _int_list("--frames", frames) if frames else None
    if counts and any(f < 2 for f in counts):
        raise ConfigError(f"--frames {frames}: a video needs at least 2 frames (one temporal patch)")
    if sp < 1:
        raise ConfigError(f"--sp {sp}: must be >= 1")
    dev = _device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: the rl-step benchmark runs on cpu or cuda")
    report = run_rl_step_benchmark(dev, quick=quick, frames=counts, sp=sp)
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)
        print(f"wrote {json_path}")
