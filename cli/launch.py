"""Start a command on N local processes (or many nodes) by re-running it under torchrun.

`longrl train rl --nproc 4 --sp 4 ...` re-executes itself as
`python -m torch.distributed.run --nproc-per-node 4 ... -m longrl.cli.app train rl --nproc 4 --sp 4 ...`;
inside torchrun the same command sees the torchrun environment and runs in-process instead. A command that
is already running under an outer torchrun (or any launcher that sets the torchrun variables) never
re-launches, so `torchrun --nproc-per-node 4 -m longrl.cli.app train rl --sp 4` works too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from longrl.errors import ConfigError


def under_torchrun() -> bool:
    """True inside a torchrun (or torchrun-compatible) worker: torchrun sets both in every worker."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_args(
    *,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
) -> list[str]:
    """torchrun flags for one node (`--standalone`) or a multi-node rendezvous (c10d backend)."""
    if nnodes < 1:
        raise ConfigError(f"--nnodes must be >= 1, got {nnodes}")
    if nnodes == 1:
        return ["--standalone"]
    if not rdzv_endpoint:
        raise ConfigError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    args = [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    if rdzv_id:
        args.append(f"--rdzv-id={rdzv_id}")
    if node_rank is not None:
        args.append(f"--node-rank={node_rank}")
    return args


def relaunch_under_torchrun(nproc: int, extra_args: Sequence[str] = ("--standalone",)) -> int | None:
    """Re-run this command under torchrun with `nproc` processes per node and return its exit code.

    Returns None (the caller goes on in-process) when nproc is 1 or this process is already a torchrun
    worker. extra_args: torchrun flags (see `torchrun_args`).
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if under_torchrun() or nproc == 1:
        return None
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        *extra_args,
        "-m",
        "longrl.cli.app",
        # "--" ends torchrun's own flags: without it torchrun reads the command's `--nproc` as an
        # abbreviation of its `--nproc-per-node` and refuses the ambiguity.
        "--",
        *sys.argv[1:],
    ]
    env = dict(os.environ)
    # One thread per worker unless the user chose: N processes on N cores should not each start N threads.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
