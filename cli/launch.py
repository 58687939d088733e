"""Start a command on N local processes (or many nodes) by re-running it in N workers.

`longrl train rl --nproc 4 --sp 4 ...` re-executes itself 4 times with the torchrun environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); each worker sees that environment and runs in-process. On one node
the workers are started here (`spawn_local`), so a user mistake a worker finds (no usable rows, a foreign run
folder, ...) comes back as one `error:` line and exit code 2, like any other command, instead of torchrun's
traceback. Several nodes go through torchrun's c10d rendezvous (`--nnodes`, `--rdzv-endpoint`). A command that
already runs under an outer torchrun (or any launcher that sets those variables) never re-launches, so
`torchrun --nproc-per-node 4 -m longrl.cli.app train rl --sp 4` works too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

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
    worker. extra_args: torchrun flags (see `torchrun_args`); `--standalone` (one node) starts the workers
    here with `spawn_local`.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if under_torchrun() or nproc == 1:
        return None
    if list(extra_args) == ["--standalone"]:
        return spawn_local(nproc)
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


# A worker that meets a user mistake writes the message here (cli/app.py main) instead of printing it, so the
# launcher can print each distinct message once.
ERROR_FILE_ENV = "LONGRL_WORKER_ERRORS"


def _worker_env(rank: int, nproc: int, port: int, errors: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
        GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{ERROR_FILE_ENV: str(errors)},
    )  # fmt: skip
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM the workers still running, then SIGKILL the ones that outlive the grace period."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def spawn_local(nproc: int) -> int:
    """Run this command in `nproc` local workers and return the exit code to use.

    When a worker fails the others are stopped (they would wait forever in a collective). The code is 2 when
    any worker exited 2 (a user mistake: its message is printed once), else the first failure's code, else 0.
    """
    from longrl.parallel.launch import free_port

    cmd = [sys.executable, "-m", "longrl.cli.app", *sys.argv[1:]]
    with tempfile.TemporaryDirectory(prefix="longrl-launch-") as tmp:
        errors = Path(tmp) / "errors.txt"
        port = free_port()
        procs = [subprocess.Popen(cmd, env=_worker_env(r, nproc, port, errors)) for r in range(nproc)]
        codes: list[int | None] = [None] * nproc
        try:
            while any(c is None for c in codes):
                for i, p in enumerate(procs):
                    if codes[i] is None:
                        codes[i] = p.poll()
                if any(c not in (None, 0) for c in codes):
                    _stop(procs)
                    codes = [p.wait() for p in procs]
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:
            _stop(procs)
            return 130
        messages = errors.read_text().splitlines() if errors.is_file() else []
    for message in dict.fromkeys(m for m in messages if m.strip()):
        print(f"error: {message}", file=sys.stderr)
    if any(c == 2 for c in codes):
        return 2
    return next((c for c in codes if c), 0)
