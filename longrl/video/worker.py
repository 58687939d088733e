"""Long-lived child processes that probe and decode videos for this process, one request after another.

Why: a native decoder can crash or hang on a corrupt file, so probing and decoding run in a child process
(`longrl/video/probe.py`); but starting a fresh interpreter costs 0.2-0.4 s, more than probing or decoding a
short video takes. A worker (`probe.py serve`) answers many requests instead, with the same guarantees:

- A request that kills the worker (segfault, abort: the worker's end of the stream closes) raises
  `WorkerLost` with its exit status and the last lines it wrote; a request that runs past its deadline kills
  the worker and raises `WorkerLost(timed_out=True)`. Either way that worker is gone, and the next request
  starts a new one.
- A request that ends any other way before its answer (the frame sink raised, Ctrl-C) kills the worker too:
  its stream is in an unknown state.
- Each request in flight has a worker of its own, taken from a pool of idle ones or started when none is
  idle, so threads probe and decode in parallel.
- Workers belong to the process that started them. A forked child forgets its parent's workers (it closes
  its copies of their pipes, at fork and whenever it sees that os.getpid() changed) and starts its own.
- At interpreter exit (atexit) every worker is stopped and reaped. A worker whose parent died without that
  sees its request pipe end, and exits.
- A worker is replaced after `MAX_REQUESTS_PER_WORKER` requests, so leaks in a decoder cannot pile up.

A request is a `probe.py` argument list; frame chunks (decode) and then one answer message come back through
a pipe (format in probe.py). Frames are read straight into the buffers a `FrameSink` hands out.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from longrl.video import probe as _probe

# Requests one worker serves before it is replaced (a new worker costs one interpreter start).
MAX_REQUESTS_PER_WORKER = 256
# Idle workers kept for reuse; a worker given back beyond this is stopped. One per thread that decodes at a
# time is what reuse needs; each idle worker holds its decoder libraries in memory (tens of MB).
MAX_IDLE_WORKERS = min(32, max(8, os.cpu_count() or 1))
_OUTPUT_TAIL_BYTES = 4096
_MAX_ANSWER_BYTES = 1 << 20
# After the stream ends, how long a worker may take to finish exiting, even past the deadline.
_EXIT_GRACE_S = 2.0


class WorkerLost(Exception):
    """A request got no answer: the worker exited (returncode: its exit status, negative for a signal), ran
    past the deadline and was killed (timed_out), or broke the stream format (neither; the message says how).
    output: the last lines the worker wrote to stdout and stderr while it served the request."""

    def __init__(
        self, message: str, returncode: int | None = None, timed_out: bool = False, output: str = ""
    ):
        super().__init__(message)
        self.returncode = returncode
        self.timed_out = timed_out
        self.output = output


class FrameSink(Protocol):
    """Where decoded frames go: `slot` hands out a contiguous uint8 buffer [k, *shape] for the next k frames,
    `commit` is called once the buffer holds them (stamps: float64 [k] seconds). Either may raise."""

    def slot(self, k: int, shape: tuple[int, int, int]) -> np.ndarray: ...

    def commit(self, frames: np.ndarray, stamps: np.ndarray) -> None: ...


@dataclass(frozen=True)
class WorkerStats:
    """Counts for this process (a forked child starts from zero): workers started, requests sent, requests
    lost (crash, timeout, broken stream), and the pids of the workers alive now, idle or busy."""

    started: int
    requests: int
    lost: int
    pids: tuple[int, ...]


class _Worker:
    """One `probe.py serve` child: requests go in through one pipe, frames and answers come out of another;
    its stdout and stderr go to an unlinked temporary file, emptied before each request."""

    def __init__(self, command: tuple[str, ...]) -> None:
        self.command = command
        self.owner = os.getpid()
        self.requests = 0  # requests sent to this worker
        self.chunks = 0  # frame chunks received for the current request
        self.proc: subprocess.Popen | None = None
        self._fds: list[int] = []  # this process's ends: requests (write), stream (read), output file
        child_ends: list[int] = []
        try:
            request_read, self._request_write = os.pipe()
            child_ends.append(request_read)
            self._fds.append(self._request_write)
            self._stream_read, stream_write = os.pipe()
            self._fds.append(self._stream_read)
            child_ends.append(stream_write)
            _widen_pipe(stream_write)
            self._output, output_path = tempfile.mkstemp(prefix="longrl-video-worker-", suffix=".log")
            self._fds.append(self._output)
            try:
                # Append mode, so the child keeps writing at the end after the parent empties the file.
                output_append = os.open(output_path, os.O_WRONLY | os.O_APPEND)
                child_ends.append(output_append)
            finally:
                os.unlink(output_path)
            self.proc = subprocess.Popen(
                [*command, "serve", "--in-fd", str(request_read), "--out-fd", str(stream_write)],
                stdin=subprocess.DEVNULL,
                stdout=output_append,
                stderr=output_append,
                pass_fds=(request_read, stream_write),
            )
        except BaseException:
            self.close()
            raise
        finally:
            for fd in child_ends:  # the child has its own copies: its exit ends the stream
                os.close(fd)
        # A request that does not fit in the pipe must not block past its deadline (the worker may hang).
        os.set_blocking(self._request_write, False)
        self._readable = select.poll()  # not select.select: it fails for descriptors >= 1024
        self._readable.register(self._stream_read, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(self._request_write, select.POLLOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ask(self, argv: Sequence[str], deadline: float, sink: FrameSink | None) -> dict:
        """Send one request; read frame chunks into `sink` until the answer comes -> the answer (a dict with
        "ok"). Time spent in `sink.commit` pushes the deadline back. Raises WorkerLost."""
        self.requests += 1
        self.chunks = 0
        os.ftruncate(self._output, 0)
        self._send((json.dumps(list(argv)) + "\n").encode(), deadline)
        header = bytearray(_probe.CHUNK_HEADER.size)
        while True:
            self._read_exact(memoryview(header), deadline)
            k, height, width, channels = _probe.CHUNK_HEADER.unpack(header)
            if k == _probe.ANSWER:
                return self._read_answer(height, deadline)
            if sink is None or k < 1 or min(height, width, channels) < 1:
                raise self._broken(f"sent a malformed chunk header {(k, height, width, channels)}")
            self.chunks += 1
            buffer = sink.slot(k, (height, width, channels))
            stamps = np.empty(k, dtype="<f8")
            self._read_exact(memoryview(stamps).cast("B"), deadline)
            self._read_exact(memoryview(buffer).cast("B"), deadline)
            started = time.monotonic()
            sink.commit(buffer, stamps)
            deadline += time.monotonic() - started

    def _read_answer(self, size: int, deadline: float) -> dict:
        if not 0 < size <= _MAX_ANSWER_BYTES:
            raise self._broken(f"announced an answer of {size} bytes")
        data = bytearray(size)
        self._read_exact(memoryview(data), deadline)
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "ok" not in answer:
            raise self._broken("sent an answer that is not a JSON object with 'ok'")
        return answer

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            if not _ready(self._writable, deadline):
                raise self._timed_out()
            try:
                view = view[os.write(self._request_write, view) :]
            except BlockingIOError:
                continue
            except BrokenPipeError:  # the worker is gone (it died before reading this request)
                raise self._exited(deadline) from None

    def _read_exact(self, view: memoryview, deadline: float) -> None:
        got = 0
        while got < len(view):
            if not _ready(self._readable, deadline):
                raise self._timed_out()
            n = os.readv(self._stream_read, [view[got:]])
            if n == 0:
                raise self._exited(deadline)
            got += n

    def _exited(self, deadline: float) -> WorkerLost:
        """The stream ended before the answer: the worker died, or is dying -> why."""
        assert self.proc is not None
        try:
            returncode = self.proc.wait(timeout=max(_EXIT_GRACE_S, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return self._timed_out()
        return WorkerLost(f"exited with status {returncode}", returncode=returncode, output=self._tail())

    def _timed_out(self) -> WorkerLost:
        self.kill()
        return WorkerLost("did not answer in time and was killed", timed_out=True, output=self._tail())

    def _broken(self, what: str) -> WorkerLost:
        self.kill()
        return WorkerLost(what, output=self._tail())

    def _tail(self) -> str:
        """The last lines the worker wrote while serving this request."""
        try:
            size = os.fstat(self._output).st_size
            data = os.pread(self._output, _OUTPUT_TAIL_BYTES, max(0, size - _OUTPUT_TAIL_BYTES))
        except OSError:
            return ""
        return data.decode(errors="replace")

    def kill(self) -> None:
        """Stop the worker now and reap it (no zombie). Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Close this process's ends of the pipes and the output file. Idempotent."""
        fds, self._fds = self._fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _ready(poller: select.poll, deadline: float) -> bool:
    """Whether the polled descriptor became ready before the deadline (False once it has passed)."""
    remaining = deadline - time.monotonic()
    return remaining > 0 and bool(poller.poll(max(1, int(remaining * 1000))))


def _widen_pipe(fd: int) -> None:
    # A 1 MiB pipe buffer instead of 64 KiB: fewer wake-ups per chunk (Linux only; harmless elsewhere).
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


# ------------------------------------------------------------------------------------------------- the pool

_lock = threading.Lock()
_owner = os.getpid()
_idle: list[_Worker] = []  # most recently used last
_workers: set[_Worker] = set()  # every worker of this process, idle or busy
_inherited: list[_Worker] = []  # a parent's workers, kept referenced so nothing tries to reap them here
_counts = {"started": 0, "requests": 0, "lost": 0}


def request(
    command: Sequence[str], argv: Sequence[str], timeout_s: float, sink: FrameSink | None = None
) -> dict:
    """Run one request in a worker started with `command` (the interpreter and probe.py's path) -> its
    answer, a dict with "ok" (probe.py's answer; a decoder error is {"ok": False, "reason"}).

    argv: probe.py's arguments for a one-shot run, without --out-fd, e.g. ["probe", "--backend", "pyav",
    "--", path]. Decoded frames are read into `sink`. `timeout_s` covers starting a worker when none is idle.
    Raises WorkerLost when the worker crashes, hangs or breaks the stream (it is then replaced); whatever
    `sink` raises propagates (and the worker is replaced as well).
    """
    deadline = time.monotonic() + timeout_s
    command = tuple(command)
    with _lock:
        _counts["requests"] += 1
    for attempt in (1, 2):
        worker, reused = _take(command)
        answered = False
        try:
            answer = worker.ask(argv, deadline, sink)
            answered = True
            return answer
        except WorkerLost as lost:
            # SIGKILL comes from outside (the OOM killer, an operator); a worker that was idle until now may
            # have got it before it read this request. Once more on a new worker, if no frame came yet.
            if attempt == 1 and reused and lost.returncode == -signal.SIGKILL and worker.chunks == 0:
                continue
            with _lock:
                _counts["lost"] += 1
            raise
        finally:
            if answered and worker.requests < MAX_REQUESTS_PER_WORKER:
                _give_back(worker)
            else:
                _retire(worker)
    raise AssertionError("unreachable")


def stats() -> WorkerStats:
    """This process's worker counts (see WorkerStats)."""
    _check_owner()
    with _lock:
        pids = tuple(sorted(w.proc.pid for w in _workers if w.alive()))
        return WorkerStats(_counts["started"], _counts["requests"], _counts["lost"], pids)


def shutdown() -> None:
    """Stop and reap every worker of this process (registered with atexit). Safe to call at any time: the next
    request starts a new worker, and a request in flight in another thread loses its worker (SIGKILL, which
    counts as coming from outside: it is retried once on a new worker, or fails as a transient error)."""
    _check_owner()
    with _lock:
        idle, busy = list(_idle), [w for w in _workers if w not in _idle]
        _idle.clear()
        _workers.difference_update(idle)
    for worker in idle:
        worker.kill()
        worker.close()
    for worker in busy:
        # Only a signal: the thread using it sees the stream end, then reaps it and closes its pipes.
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()


def _take(command: tuple[str, ...]) -> tuple[_Worker, bool]:
    """An idle worker started with `command`, else a new one -> (worker, whether it served before)."""
    _check_owner()
    found = None
    with _lock:
        # The most recently used first; idle workers of another command (another interpreter or script) will
        # not be asked again, and dead ones (e.g. killed by the OOM killer while idle) cannot be.
        keep, drop = [], []
        for worker in reversed(_idle):
            if found is None and worker.command == command and worker.alive():
                found = worker
            elif worker.command == command and worker.alive():
                keep.append(worker)
            else:
                drop.append(worker)
        _idle[:] = keep[::-1]
    for worker in drop:
        _retire(worker)
    if found is not None:
        return found, True
    worker = _Worker(command)
    with _lock:
        _workers.add(worker)
        _counts["started"] += 1
    return worker, False


def _give_back(worker: _Worker) -> None:
    with _lock:
        if worker.owner == os.getpid() and worker in _workers and len(_idle) < MAX_IDLE_WORKERS:
            _idle.append(worker)
            return
    _retire(worker)


def _retire(worker: _Worker) -> None:
    if worker.owner == os.getpid():
        worker.kill()
    worker.close()
    with _lock:
        _workers.discard(worker)


def _check_owner() -> None:
    # The fork hook below normally did this already; this also covers a fork that skipped Python's hooks.
    if _owner != os.getpid():
        _forget_inherited()


def _forget_inherited() -> None:
    """In a forked child: the workers are the parent's. Close this process's copies of their pipes (so each
    worker still sees its requests end when the parent goes), never signal or wait for them."""
    global _lock, _owner
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork
    _owner = os.getpid()
    for worker in list(_workers):
        worker.close()
        _inherited.append(worker)
    _idle.clear()
    _workers.clear()
    _counts.update(started=0, requests=0, lost=0)


os.register_at_fork(after_in_child=_forget_inherited)
atexit.register(shutdown)
