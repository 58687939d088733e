"""What a resumed run may change in its config, and what it may not (`--resume`).

The effective config the checkpoint was written under (kept in its trainer_state.json; for checkpoints
without one, the run folder's config.yaml, which every start rewrites) is compared key by key with the new
one:
- FIXED keys make continuing meaningless or impossible (another model or LoRA layout, other data or data
  order, another seed, another process layout or sharding, another advantage estimator): any change is
  refused with one ConfigError line naming the key and both values;
- LAUNCH keys describe how this process was started (run folder spelling, rendezvous, progress bar) and are
  not compared; parallel.fsdp neither, as "auto" may resolve either way: the checkpoint knows whether it
  was sharded and refuses the other layout (`longrl.train.checkpoint.load_checkpoint`);
- every other change (lr and the rest of the optim section, steps, logging, save interval, rollout and
  loss settings, frames, ...) is allowed: `check_resume_config` returns it, the trainer prints one line per
  key ("resume: optim.lr 0.001 -> 0.0005") and records it in the checkpoints and summary.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from longrl.errors import ConfigError

# A key is fixed when it equals one of these or lies under one ("model.lora" covers model.lora.rank, ...).
FIXED_KEYS = (
    "model.path", "model.dtype", "model.train_vision", "model.lora", "data.train", "data.shuffle", "run.seed",
    "parallel.sp", "algo.advantage",
)  # fmt: skip
# parallel.fsdp is checked on what it resolved to ("auto" may mean either): the checkpoint records whether
# it was sharded and `load_checkpoint` refuses the other setting. nproc and nnodes are how the processes
# were started (`--nproc 8`, or torchrun itself with nproc 1; 2 nodes x 4 or 1 x 8): `load_checkpoint`
# checks what matters, the world size.
LAUNCH_KEYS = ("run.out", "run.resume", "run.progress", "parallel.nproc", "parallel.nnodes",
               "parallel.node_rank", "parallel.rdzv_endpoint", "parallel.rdzv_id", "parallel.fsdp")  # fmt: skip
# Paths compare by the file they name, so `runs/x/../data.jsonl` and an absolute path to it are equal.
PATH_KEYS = ("model.path", "data.train", "data.video_root", "data.ptx")


@dataclass(frozen=True)
class ConfigChange:
    """One key whose value differs between the saved run and the resumed one."""

    key: str
    old: Any
    new: Any

    def line(self) -> str:
        return f"resume: {self.key} {_show(self.old)} -> {_show(self.new)}"

    def to_dict(self, step: int) -> dict[str, Any]:
        return {"step": step, "key": self.key, "old": self.old, "new": self.new}


def _covered(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3} (nested mappings only; lists stay values)."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _same(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if key in PATH_KEYS and isinstance(old, str) and isinstance(new, str):
        try:
            return os.path.samefile(old, new)
        except OSError:
            return False
    return False


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[ConfigChange]:
    """The compared keys (not LAUNCH_KEYS) present in both nested configs whose values differ, in the new
    config's key order. Keys only one side has (a config of an older version) are not compared."""
    old, new = flatten(saved), flatten(current)
    return [
        ConfigChange(key, old[key], value)
        for key, value in new.items()
        if key in old and not _covered(key, LAUNCH_KEYS) and not _same(key, old[key], value)
    ]


def _checkpoint_config(checkpoint: Path) -> Mapping[str, Any] | None:
    """The config saved inside the checkpoint (trainer_state.json "config"), None when it has none."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None  # load_checkpoint reports an unreadable checkpoint with its own message
    saved = state.get("config") if isinstance(state, Mapping) else None
    return saved if isinstance(saved, Mapping) else None


def check_resume_config(
    checkpoint: Path, current: Mapping[str, Any], saved_file: Path | None = None
) -> list[ConfigChange]:
    """Compare the config `checkpoint` was written under with the new one (`config_to_dict` of the new
    config). The checkpoint's own copy is used when it has one, else `saved_file` (the run's config.yaml;
    nothing to compare when it does not exist either). Raises ConfigError (one line, every fixed key that
    changed, with both values) when a FIXED key differs; returns the allowed changes."""
    saved = _checkpoint_config(checkpoint)
    if saved is not None:
        return _check(saved, current, checkpoint)
    if saved_file is None or not saved_file.is_file():
        return []
    try:
        saved = yaml.safe_load(saved_file.read_text())
    except (OSError, yaml.YAMLError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read {saved_file} to check the resumed config ({reason})") from None
    if not isinstance(saved, Mapping):
        raise ConfigError(f"{saved_file} is not a config mapping; cannot check the resumed config")
    return _check(saved, current, saved_file.parent)


def _check(saved: Mapping[str, Any], current: Mapping[str, Any], run: Path) -> list[ConfigChange]:
    changes = config_changes(saved, current)
    fixed = [c for c in changes if _covered(c.key, FIXED_KEYS)]
    if fixed:
        what = "; ".join(f"{c.key} {_show(c.old)} -> {_show(c.new)}" for c in fixed)
        raise ConfigError(
            f"cannot resume {run} with a different {what}: the checkpoint would not "
            "continue the same run; keep the saved value or start a new --out folder"
        )
    return changes


def _show(value: Any) -> str:
    return "null" if value is None else str(value)
