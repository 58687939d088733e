"""Stage 1, scan: index the videos (path, duration, fps, frame count, resolution, content hash).

Input: `--videos DIR` (every video file below it, by suffix, hidden files skipped) or a text file listing
video paths, one a line (relative lines are relative to the list file; `#` starts a comment). Each file is
probed in a child process (crash and hang safe, `longrl.video.probe_video`); a file that cannot be used is
rejected with the decoder's reason, a file whose bytes equal an earlier one's as `duplicate_content`, and a
file outside the video root as `outside_video_root`. Record: {"id", "path" (relative to the video root),
"duration_s", "fps", "num_frames", "width", "height", "sha256", "size_bytes"}.
"""

from __future__ import annotations

import os
from pathlib import Path

from longrl.data.generate.context import RunContext, StageStats, run_bounded
from longrl.data.generate.records import VIDEO_SUFFIXES, sha256_file, video_id
from longrl.errors import ConfigError, VideoError


def list_videos(source: Path) -> list[Path]:
    """The video files named by `--videos`: a folder (recursive, by suffix) or a list file, in sorted order."""
    if source.is_dir():
        found = []
        for folder, dirs, files in os.walk(source, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [
                Path(folder) / name
                for name in files
                if not name.startswith(".") and name.lower().endswith(VIDEO_SUFFIXES)
            ]
        return sorted(found)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--videos {source}: cannot read the list file ({err})") from None
    paths = []
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if entry:
            path = Path(entry).expanduser()
            paths.append(path if path.is_absolute() else source.parent / path)
    return paths


def default_video_root(source: Path) -> Path:
    """The folder that output rows' video paths are relative to: --videos itself, or the list file's folder."""
    return (source if source.is_dir() else source.parent).resolve()


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root).as_posix()
    except (ValueError, OSError):
        return None


def run_scan(ctx: RunContext, stats: StageStats) -> None:
    """Probe and hash every listed video that has no record yet."""
    cfg = ctx.cfg
    records = ctx.log("scan")
    paths = list_videos(cfg.videos)
    if not paths:
        raise ConfigError(
            f"--videos {cfg.videos}: no video files found (looked for {', '.join(VIDEO_SUFFIXES)})"
        )
    items: list[tuple[str, Path, str | None]] = []  # (id, path, rel or None when outside the root)
    seen: set[str] = set()
    for path in paths:
        rel = _relative(path, ctx.video_root)
        rid = video_id(rel if rel is not None else path.as_posix())
        if rid in seen:
            continue  # the same file listed twice
        seen.add(rid)
        items.append((rid, path, rel))
    stats.total = len(items)
    pending = [item for item in items if not ctx.is_done("scan", item[0])]
    stats.skipped = stats.total - len(pending)
    hashes = {r["sha256"]: r["id"] for r in records.values()}

    def work(item: tuple[str, Path, str | None]) -> dict | tuple[str, str]:
        from longrl.video import probe_video

        rid, path, rel = item
        if rel is None:
            return (
                "outside_video_root",
                f"{path} is not inside the video root {ctx.video_root}; pass --video-root",
            )
        try:
            info = probe_video(path, cfg.video_backend)
            digest = sha256_file(path)
            size = path.stat().st_size
        except VideoError as err:
            return ("video_unreadable", str(err))
        except OSError as err:
            return ("video_unreadable", f"{path}: {err.strerror or err}")
        return {
            "id": rid,
            "path": rel,
            "duration_s": info.duration_s,
            "fps": info.fps,
            "num_frames": info.num_frames,
            "width": info.width,
            "height": info.height,
            "sha256": digest,
            "size_bytes": size,
        }

    # Results are handled in listing order (not completion order), so which copy of a duplicate is kept
    # does not depend on timing.
    results: dict[str, dict | tuple[str, str]] = {}
    order = [item[0] for item in pending]
    next_index = 0

    with ctx.task("scan", len(pending)) as advance:

        def on_done(item: tuple[str, Path, str | None], result: dict | tuple[str, str]) -> None:
            nonlocal next_index
            results[item[0]] = result
            while next_index < len(order) and order[next_index] in results:
                rid = order[next_index]
                outcome = results.pop(rid)
                next_index += 1
                if isinstance(outcome, tuple):
                    ctx.reject(stats, rid, *outcome)
                elif outcome["sha256"] in hashes:
                    first = records.get(hashes[outcome["sha256"]])
                    ctx.reject(
                        stats,
                        rid,
                        "duplicate_content",
                        f"{outcome['path']} has the same bytes as {first['path']}",
                    )
                else:
                    hashes[outcome["sha256"]] = rid
                    records.append(outcome)
                    stats.done += 1
                advance(1)

        run_bounded(pending, work, on_done, cfg.concurrency)
