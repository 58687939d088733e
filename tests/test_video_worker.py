"""The persistent decode worker: reuse, crash and hang isolation, fork/exit hygiene, and equality with the
one-shot child.

References: the frames tests/videos.py wrote (each frame shows its index), the one-shot `probe.py probe` /
`probe.py decode` child run by hand here (the per-call path decode.py used before the worker; its frames and
timestamps must match bit for bit), and process facts read from /proc (who is a worker's parent, whether a
stopped worker is gone). Faults come from a stand-in child script that runs the real probe.py but aborts or
hangs on file names that ask for it, and from a real file that makes decord 0.6.0 abort (std::bad_alloc).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from videos import frame_index_of, write_bad_sample_table, write_video

import longrl.video.decode as decode_mod
from longrl.errors import VideoError
from longrl.video import clear_probe_cache, decode_frames, probe_video, worker
from longrl.video import probe as probe_mod

SCRIPT = decode_mod._PROBE_SCRIPT


@pytest.fixture(autouse=True)
def fresh_workers():
    """Each test starts with no worker and an empty probe cache, and leaves none behind."""
    worker.shutdown()
    clear_probe_cache()
    yield
    worker.shutdown()
    clear_probe_cache()


_BASE: list[worker.WorkerStats] = []


@pytest.fixture(autouse=True)
def counts_from_zero(fresh_workers):
    """`_stats()` counts from the start of each test (the worker module counts per process)."""
    _BASE[:] = [worker.stats()]
    yield


def _stats() -> worker.WorkerStats:
    now, base = worker.stats(), _BASE[0]
    return worker.WorkerStats(
        now.started - base.started, now.requests - base.requests, now.lost - base.lost, now.pids
    )


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("clips")
    return [str(write_video(root / f"clip{i}.mp4", 16, 8)) for i in range(6)]


def _faulty_child(tmp_path: Path) -> str:
    """probe.py, except that a file named *abort-probe* / *kill-probe* / *hang-probe* aborts / SIGKILLs /
    hangs the probe, and one named *abort-decode* (...) does that to the decode after the first chunk."""
    script = tmp_path / "faulty_child.py"
    script.write_text(
        "import importlib.util, os, signal, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('real_probe', {SCRIPT!r})\n"
        "probe = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(probe)\n"
        "def fault(path, stage):\n"
        "    name = os.path.basename(path)\n"
        "    if f'abort-{stage}' in name:\n"
        "        os.abort()\n"
        "    if f'kill-{stage}' in name:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    if f'hang-{stage}' in name:\n"
        "        time.sleep(600)\n"
        "def probing(real):\n"
        "    def run(path):\n"
        "        fault(path, 'probe')\n"
        "        return real(path)\n"
        "    return run\n"
        "def decoding(real):\n"
        "    def run(path, indices, chunk):\n"
        "        for n, item in enumerate(real(path, indices, chunk)):\n"
        "            if n == 1:\n"
        "                fault(path, 'decode')\n"
        "            yield item\n"
        "    return run\n"
        "for name in list(probe.PROBERS):\n"
        "    probe.PROBERS[name] = probing(probe.PROBERS[name])\n"
        "    probe.ITERATORS[name] = decoding(probe.ITERATORS[name])\n"
        "sys.exit(probe.main())\n"
    )
    return str(script)


def _gone(pid: int) -> bool:
    """The process has exited and been reaped (no /proc entry), or at least exited (a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z"


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _check_decode(path: str, indices, backend: str = "decord") -> None:
    out = decode_frames(path, indices, backend)
    assert [frame_index_of(f) for f in out.frames] == list(indices)


def test_many_requests_reuse_one_worker(clips):
    for path in clips:
        assert probe_video(path, "decord").num_frames == 16
        _check_decode(path, [15, 0, 7, 7])
    stats = _stats()
    # 6 probes + 6 decodes, one worker; the worker is the child of this process.
    assert (stats.started, stats.requests, stats.lost) == (1, 12, 0)
    assert len(stats.pids) == 1 and _parent_of(stats.pids[0]) == os.getpid()


def test_worker_is_replaced_after_max_requests(clips, monkeypatch):
    monkeypatch.setattr(worker, "MAX_REQUESTS_PER_WORKER", 3)
    for path in clips[:4]:
        probe_video(path, "pyav")
        _check_decode(path, [3], "pyav")
    # 8 requests, 3 per worker: workers 1, 2 and 3 (which has served 2).
    assert _stats().started == 3


def _read_stream(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [N, H, W, 3] and timestamps float64 [N] from a one-shot decode's stream."""
    frames, stamps, pos = [], [], 0
    while pos < len(data):
        k, height, width, channels = probe_mod.CHUNK_HEADER.unpack_from(data, pos)
        pos += probe_mod.CHUNK_HEADER.size
        stamps.append(np.frombuffer(data, "<f8", k, pos))
        pos += 8 * k
        size = k * height * width * channels
        frames.append(np.frombuffer(data, np.uint8, size, pos).reshape(k, height, width, channels))
        pos += size
    return np.concatenate(frames), np.concatenate(stamps)


def _one_shot(args: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-P", SCRIPT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        pass_fds=pass_fds,
    )


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_worker_matches_one_shot_child(tmp_path, backend):
    """Probe answers and decoded frames from the worker equal those of a fresh one-shot child per call."""
    path = str(write_video(tmp_path / "v.mp4", 40, 8))
    indices = [0, 3, 8, 9, 20, 33, 39]
    probe = _one_shot(["probe", "--backend", backend, "--", path])
    expected = json.loads(probe.communicate(timeout=60)[0])
    read_fd, write_fd = os.pipe()
    decode = _one_shot(
        ["decode", "--backend", backend, "--indices", ",".join(map(str, indices)), "--chunk", "3"]
        + ["--out-fd", str(write_fd), "--", path],
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as stream:
        frames, stamps = _read_stream(stream.read())
    assert json.loads(decode.communicate(timeout=60)[0]) == {"ok": True, "backend": backend, "frames": 7}

    info = probe_video(path, backend)
    assert expected["ok"]
    got = {"num_frames": info.num_frames, "fps": info.fps, "width": info.width, "height": info.height}
    assert got == {key: expected[key] for key in got}
    out = decode_frames(path, indices, backend, info=info)
    np.testing.assert_array_equal(out.frames, frames)
    np.testing.assert_array_equal(out.timestamps_s, stamps)
    assert [frame_index_of(f) for f in out.frames] == indices


@pytest.mark.timeout(60)
def test_crash_fails_that_file_and_next_file_gets_a_new_worker(clips, tmp_path, monkeypatch):
    monkeypatch.setattr(decode_mod, "_PROBE_SCRIPT", _faulty_child(tmp_path))
    monkeypatch.setattr(decode_mod, "CHUNK_BYTES", 4 * 48 * 64 * 3)  # 4 frames a chunk
    crash_probe = shutil.copy(clips[0], tmp_path / "abort-probe.mp4")
    crash_decode = shutil.copy(clips[0], tmp_path / "abort-decode.mp4")
    _check_decode(clips[1], [1, 2], "pyav")
    first = _stats()
    assert first.started == 1

    with pytest.raises(VideoError) as exc:
        probe_video(crash_probe, "pyav")
    assert str(exc.value).startswith(f"{crash_probe}: the pyav decoder crashed (SIGABRT) while probing")
    after = _stats()
    assert after.lost == 1 and after.pids == () and _gone(first.pids[0])

    _check_decode(clips[2], [5, 0], "pyav")  # a new worker
    assert _stats().started == 2

    # A crash in the middle of the frame stream (after the first of 3 chunks).
    info = probe_video(crash_decode, "pyav")
    with pytest.raises(VideoError) as exc:
        decode_frames(crash_decode, np.arange(12), "pyav", info=info)
    assert str(exc.value).startswith(f"{crash_decode}: the pyav decoder crashed (SIGABRT) while decoding")
    _check_decode(clips[3], list(range(16)), "pyav")
    stats = _stats()
    assert (stats.started, stats.lost) == (3, 2)

    # SIGKILL (normally from outside: the OOM killer) on a worker that served before is retried once on a
    # new worker; when that one is killed too, the file fails.
    killer = shutil.copy(clips[0], tmp_path / "kill-probe.mp4")
    with pytest.raises(VideoError) as exc:
        probe_video(killer, "pyav")
    assert str(exc.value).startswith(f"{killer}: the pyav decoder crashed (SIGKILL) while probing")
    stats = _stats()
    assert (stats.started, stats.lost) == (4, 3)  # the retry's worker
    _check_decode(clips[4], [0], "pyav")
    assert _stats().started == 5


@pytest.mark.timeout(60)
def test_file_that_aborts_decord_fails_alone(clips, tmp_path):
    """A real crash: decord 0.6.0 aborts on a damaged sample table (the worker dies, not this process)."""
    bad = str(
        write_bad_sample_table(write_video(tmp_path / "src.mp4", 40, 8, faststart=True), tmp_path / "b.mp4")
    )
    direct = subprocess.run(
        [sys.executable, "-c", "import sys, decord; decord.VideoReader(sys.argv[1])", bad],
        capture_output=True,
        timeout=30,
    )
    if direct.returncode >= 0:
        pytest.skip("this decord build does not crash on the file")
    _check_decode(clips[0], [4])
    with pytest.raises(
        VideoError, match=r"^.*b\.mp4: the decord decoder crashed \(SIG[A-Z]+\) while probing"
    ):
        probe_video(bad, "decord")
    _check_decode(clips[1], [4, 9])
    stats = _stats()
    assert (stats.started, stats.lost, len(stats.pids)) == (2, 1, 1)


@pytest.mark.timeout(60)
def test_timeout_kills_the_worker_and_the_next_request_starts_another(clips, tmp_path, monkeypatch):
    monkeypatch.setattr(decode_mod, "_PROBE_SCRIPT", _faulty_child(tmp_path))
    monkeypatch.setattr(decode_mod, "CHUNK_BYTES", 4 * 48 * 64 * 3)
    hang_probe = shutil.copy(clips[0], tmp_path / "hang-probe.mp4")
    hang_decode = shutil.copy(clips[0], tmp_path / "hang-decode.mp4")
    probe_video(clips[0], "pyav")
    first = _stats().pids[0]
    start = time.monotonic()
    with pytest.raises(
        VideoError, match=r"hang-probe\.mp4: the pyav decoder did not finish probing within 1 s"
    ):
        probe_video(hang_probe, "pyav", timeout_s=1.0)
    assert _gone(first) and _stats().pids == ()
    info = probe_video(hang_decode, "pyav")  # a new worker
    second = _stats().pids[0]
    assert second != first
    with pytest.raises(
        VideoError, match=r"hang-decode\.mp4: the pyav decoder did not finish decoding within 1 s"
    ):
        decode_frames(hang_decode, np.arange(12), "pyav", info=info, timeout_s=1.0)
    assert _gone(second)
    assert time.monotonic() - start < 20
    _check_decode(clips[1], [2, 3], "pyav")
    stats = _stats()
    assert (stats.started, stats.lost, len(stats.pids)) == (3, 2, 1)


# A stand-in worker that breaks the stream format: 32 bytes that are no chunk or answer header, then a hang.
BAD_STREAM_CHILD = (
    "import os, sys, time\n"
    "os.write(int(sys.argv[sys.argv.index('--out-fd') + 1]), bytes(range(32)))\n"
    "time.sleep(600)\n"
)


@pytest.mark.timeout(60)
def test_broken_stream_fails_the_request_and_kills_the_worker(clips, tmp_path, monkeypatch):
    script = tmp_path / "bad_stream.py"
    script.write_text(BAD_STREAM_CHILD)
    monkeypatch.setattr(decode_mod, "_PROBE_SCRIPT", str(script))
    start = time.monotonic()
    with pytest.raises(VideoError, match=r"clip0\.mp4: the pyav child process sent a malformed chunk header"):
        probe_video(clips[0], "pyav", timeout_s=30)
    assert time.monotonic() - start < 20  # killed at once, not at the timeout
    stats = _stats()
    assert (stats.started, stats.lost, stats.pids) == (1, 1, ())


def test_worker_that_died_while_idle_is_replaced_silently(clips):
    probe_video(clips[0], "pyav")
    (pid,) = _stats().pids
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _check_decode(clips[0], [6], "pyav")  # no error: the dead worker was never asked
    stats = _stats()
    assert (stats.started, stats.lost) == (2, 0) and stats.pids != (pid,)


def test_frame_sink_error_replaces_the_worker(clips):
    """A transform that raises mid-stream leaves the worker's stream unread: it is killed, not reused."""

    def broken(frames, num_frames):
        raise RuntimeError("stand-in transform failure")

    _check_decode(clips[0], [1], "pyav")
    (pid,) = _stats().pids
    with pytest.raises(RuntimeError, match="stand-in"):
        decode_frames(clips[0], [1, 2], "pyav", transform=broken)
    assert _gone(pid)
    _check_decode(clips[0], [1, 2], "pyav")
    assert _stats().started == 2


def test_threads_decode_in_parallel_with_their_own_workers(clips):
    errors: list[BaseException] = []

    def run(offset: int) -> None:
        try:
            for i in range(6):
                path = clips[(offset + i) % len(clips)]
                _check_decode(path, [(offset + i) % 16, 15 - i], "pyav")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    stats = _stats()
    # 6 probes (one per file, cached; two threads may probe the same file at once) + 18 decodes.
    assert 1 <= stats.started <= 3 and 24 <= stats.requests <= 24 + 12 and stats.lost == 0


def _use_worker_in_child(path: str, conn) -> None:
    """Run in a forked or spawned child: decode with its own worker, report what it used."""
    try:
        clear_probe_cache()
        out = decode_frames(path, [3, 1])
        stats = worker.stats()
        conn.send(
            {
                "pid": os.getpid(),
                "indices": [frame_index_of(f) for f in out.frames],
                "started": stats.started,
                "workers": list(stats.pids),
                "parents": [_parent_of(pid) for pid in stats.pids],
            }
        )
    except BaseException as exc:
        conn.send({"error": repr(exc)})
    finally:
        conn.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_child_process_starts_its_own_worker(clips, method):
    _check_decode(clips[0], [0])
    (parent_worker,) = _stats().pids
    context = multiprocessing.get_context(method)
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_use_worker_in_child, args=(clips[1], send))
    child.start()
    send.close()
    report = receive.recv()
    child.join(timeout=60)
    assert "error" not in report, report
    assert report["indices"] == [3, 1]
    # The child started one worker of its own (counts start from zero after a fork), a child of its own.
    assert report["started"] == 1 and report["workers"] != [parent_worker]
    assert report["parents"] == [report["pid"]]
    # The child exited without atexit (multiprocessing ends children with os._exit): its worker sees its
    # request pipe end and exits by itself.
    deadline = time.monotonic() + 10
    while not _gone(report["workers"][0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(report["workers"][0])
    # The parent's worker was left alone, and still serves.
    _check_decode(clips[2], [5])
    stats = _stats()
    assert stats.pids == (parent_worker,) and stats.started == 1


EXIT_SCRIPT = """
import atexit, os, sys
def check_reaped():  # registered before longrl's own handler, so it runs after it
    pid = int(os.environ["WORKER_PID"])
    try:
        os.waitpid(pid, os.WNOHANG)
        print("NOT REAPED")
    except ChildProcessError:
        print("REAPED" if not os.path.exists(f"/proc/{pid}") else "STILL LISTED")
atexit.register(check_reaped)
from longrl.video import probe_video, worker
probe_video(sys.argv[1], "pyav")
os.environ["WORKER_PID"] = str(worker.stats().pids[0])
print(os.environ["WORKER_PID"], flush=True)
"""


@pytest.mark.timeout(60)
def test_workers_are_stopped_and_reaped_at_exit(clips):
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, clips[0]], capture_output=True, text=True, timeout=60
    )
    lines = done.stdout.split()
    assert done.returncode == 0 and lines[-1] == "REAPED", done.stdout + done.stderr[-2000:]
    assert _gone(int(lines[0]))


@pytest.mark.timeout(60)
def test_worker_exits_when_its_parent_is_killed(clips):
    script = (
        "import sys, time\nfrom longrl.video import probe_video, worker\n"
        "probe_video(sys.argv[1], 'pyav')\nprint(worker.stats().pids[0], flush=True)\ntime.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, clips[0]], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert not _gone(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid)
