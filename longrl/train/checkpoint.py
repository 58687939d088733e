"""Training checkpoints: written atomically, resumed exactly.

Layout of run_dir/checkpoints/step_{step:08d}/:
    model.safetensors     the full `model.state_dict()` (tied tensors stored once, aliases in the metadata)
    optimizer.pt          optimizer.state_dict() (FSDP2-sharded models: the full state keyed by parameter
                          name, from torch.distributed.checkpoint.state_dict)
    scheduler.pt          scheduler.state_dict()
    trainer_state.json    the trainer's own state (step, data position, ...), JSON
    rng_rank{r}.pt        python `random`, numpy and torch (CPU, current CUDA device) RNG states of rank r
    meta.json             step, world size, file list; written last

Everything is written into run_dir/checkpoints/.tmp_step_{step:08d} and then renamed into place, so a
folder named step_XXXXXXXX is complete: a run killed while saving leaves the previous checkpoint intact and
a temp folder that `latest_checkpoint` ignores (the next save removes it). Rank 0 writes every file after
gathering the other ranks' RNG states, so a shared filesystem is needed only for resuming multi-process runs.
Tensors in .pt files are plain (no pickled classes), so everything loads with `torch.load(weights_only=True)`.
Models sharded with FSDP2 (DTensor parameters) are gathered into full tensors for saving (a collective) and
resharded on loading, so the files look the same either way except for the optimizer's key style.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from longrl.errors import ConfigError
from longrl.parallel.groups import ParallelState

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp_"
_OLD_PREFIX = ".old_"


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """run_dir/checkpoints/step_{step:08d} (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}"


# ---- RNG --------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states: python `random`, numpy's global generator, torch CPU, and the current CUDA
    device's generator when CUDA is in use. Only plain types and tensors (safe for weights_only loading)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back the RNG states `capture_rng_state` returned (CUDA only when present in both)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- save -------------------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    trainer_state: Mapping[str, Any],
    state: ParallelState,
    keep_last: int = 2,
) -> Path:
    """Write the checkpoint of `step` atomically and prune older ones; every rank must call it (a collective).

    Rank 0 writes model, optimizer, scheduler, trainer_state (must be JSON-able) and the RNG states gathered
    from every rank; the others wait for it and raise if it failed. Keeps the newest `keep_last` complete
    checkpoints up to this step (keep_last < 1: keep all). Returns the checkpoint folder on every rank.
    """
    final = checkpoint_dir(run_dir, step)
    trainer_json = json.dumps(dict(trainer_state), indent=2)  # TypeError here, before anything is written
    rng_states = _gather_on_rank0(capture_rng_state(), state)
    sharded = _is_sharded(model)
    if sharded:  # collectives: every rank takes part, rank 0 receives the full tensors
        model_state, optim_state = _full_sharded_state(model, optimizer)
    else:
        keep = state.rank == 0
        model_state = _model_state(model) if keep else {}
        optim_state = optimizer.state_dict() if optimizer is not None and keep else None
    failure: str | None = None
    if state.rank == 0:
        try:
            written = _Written(model_state, optim_state, scheduler.state_dict() if scheduler is not None else None,
                               trainer_json, rng_states, sharded)  # fmt: skip
            _write_checkpoint(final, step, written, state.world_size)
            _prune(final.parent, step, keep_last)
        except BaseException as err:
            failure = f"{type(err).__name__}: {err}"
            _tell_others(failure, state)
            raise
    failure = _tell_others(failure, state)
    if failure is not None:
        raise RuntimeError(f"rank 0 failed to write checkpoint {final}: {failure}")
    return final


@dataclass
class _Written:
    """What rank 0 writes into a checkpoint folder."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    trainer_json: str
    rng_states: list[dict[str, Any]]
    sharded: bool


def _write_checkpoint(final: Path, step: int, written: _Written, world_size: int) -> None:
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f"{_TMP_PREFIX}*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f"{_TMP_PREFIX}{final.name}"
    tmp.mkdir()
    try:
        files = ["model.safetensors"]
        _save_model_state(written.model_state, tmp / "model.safetensors")
        if written.optimizer_state is not None:
            _torch_save(written.optimizer_state, tmp / "optimizer.pt")
            files.append("optimizer.pt")
        if written.scheduler_state is not None:
            _torch_save(written.scheduler_state, tmp / "scheduler.pt")
            files.append("scheduler.pt")
        _write_text(tmp / "trainer_state.json", written.trainer_json)
        files.append("trainer_state.json")
        for rank, rng in enumerate(written.rng_states):
            _torch_save(rng, tmp / f"rng_rank{rank}.pt")
            files.append(f"rng_rank{rank}.pt")
        meta = {"format": FORMAT_VERSION, "step": step, "world_size": world_size, "sharded": written.sharded,
                "files": files}  # fmt: skip
        _write_text(tmp / "meta.json", json.dumps(meta, indent=2))  # last: its presence marks completeness
        if final.exists():  # saving the same step again (e.g. after resuming from an earlier checkpoint)
            old = parent / f"{_OLD_PREFIX}{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _prune(parent: Path, step: int, keep_last: int) -> None:
    """Delete complete checkpoints older than the newest `keep_last` up to `step` (later ones are left)."""
    if keep_last < 1:
        return
    older = sorted(s for s, _ in _complete_checkpoints(parent) if s < step)
    for old_step in older[: max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(parent / f"step_{old_step:08d}", ignore_errors=True)


# ---- find and load ----------------------------------------------------------------------------------------


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under run_dir/checkpoints, or None.

    Temp folders of an interrupted save and step folders without meta.json are ignored.
    """
    found = _complete_checkpoints(Path(run_dir) / CHECKPOINT_DIR)
    return max(found)[1] if found else None


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    state: ParallelState,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG states from a checkpoint folder; return the
    trainer_state dict saved with it.

    Every file is read and checked before anything is changed. A missing, incomplete or corrupted
    checkpoint, one saved with a different number of processes, or one that does not fit the model /
    optimizer raises ConfigError (one line).
    """
    path = Path(path)
    meta = _read_meta(path)
    if meta["world_size"] != state.world_size:
        raise ConfigError(
            f"checkpoint {path} was saved by {meta['world_size']} processes, this run has {state.world_size}; "
            "resume with the same --nproc"
        )
    sharded = _is_sharded(model)
    if bool(meta.get("sharded", False)) != sharded:
        saved = "true" if meta.get("sharded") else "false"
        raise ConfigError(
            f"checkpoint {path} was saved with parallel.fsdp {saved}, this run has parallel.fsdp "
            f"{str(sharded).lower()}; resume with --{'' if meta.get('sharded') else 'no-'}fsdp"
        )
    files = set(meta["files"])
    missing = [n for n in ("optimizer.pt", "scheduler.pt") if n not in files]
    if (optimizer is not None and "optimizer.pt" in missing) or (
        scheduler is not None and "scheduler.pt" in missing
    ):
        raise ConfigError(f"checkpoint {path} has no {' / '.join(missing)}; it cannot resume training")
    model_state = _guard(path, "model.safetensors", lambda: _load_model_state(path / "model.safetensors"))
    optim_state = (
        _guard(path, "optimizer.pt", lambda: _torch_load(path / "optimizer.pt")) if optimizer else None
    )
    sched_state = (
        _guard(path, "scheduler.pt", lambda: _torch_load(path / "scheduler.pt")) if scheduler else None
    )
    rng_name = f"rng_rank{state.rank}.pt"
    rng = _guard(path, rng_name, lambda: _torch_load(path / rng_name))
    trainer_state = _guard(
        path, "trainer_state.json", lambda: json.loads((path / "trainer_state.json").read_text())
    )

    own = model.state_dict()
    missing_keys = sorted(set(own) - set(model_state))
    unexpected = sorted(set(model_state) - set(own))
    if missing_keys or unexpected:
        raise ConfigError(
            f"checkpoint {path} does not match the model (missing: {_few(missing_keys)}; "
            f"unexpected: {_few(unexpected)}); was it saved with other model or LoRA settings?"
        )
    wrong_shape = [k for k, v in model_state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong_shape:
        raise ConfigError(
            f"checkpoint {path} has tensors of other shapes than the model: {_few(wrong_shape)}"
        )
    try:
        if sharded:
            _load_sharded_state(model, optimizer, model_state, optim_state)
        else:
            with torch.no_grad():
                model.load_state_dict(model_state, strict=True)
            if optimizer is not None:
                optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"checkpoint {path}: its optimizer state does not fit this run ({reason})"
        ) from None
    if scheduler is not None:
        scheduler.load_state_dict(sched_state)
    restore_rng_state(rng)
    return trainer_state


# ---- helpers ----------------------------------------------------------------------------------------------


def _complete_checkpoints(parent: Path) -> list[tuple[int, Path]]:
    if not parent.is_dir():
        return []
    found = []
    for child in parent.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / "meta.json").is_file():
            found.append((int(match.group(1)), child))
    return found


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise ConfigError(f"checkpoint {path} does not exist (expected a run_dir/checkpoints/step_* folder)")
    try:
        meta = json.loads((path / "meta.json").read_text())
        ok = (
            isinstance(meta, dict)
            and isinstance(meta.get("files"), list)
            and isinstance(meta.get("step"), int)
        )
    except (OSError, ValueError):
        ok = False
    if not ok or not isinstance(meta.get("world_size"), int):
        raise ConfigError(
            f"checkpoint {path} is incomplete (no valid meta.json); resume from another checkpoint"
        )
    absent = [name for name in meta["files"] if not (path / name).is_file()]
    if absent:
        raise ConfigError(
            f"checkpoint {path} is incomplete (missing {', '.join(absent)}); resume from another one"
        )
    return meta


def _guard(path: Path, name: str, read: Any) -> Any:
    """read() with any failure turned into a one-line ConfigError naming the corrupted file."""
    try:
        return read()
    except Exception as err:  # noqa: BLE001 - safetensors, pickle, zip and json all fail differently
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"checkpoint {path}: {name} is corrupted ({reason}); resume from another checkpoint"
        ) from None


def _is_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are DTensors (FSDP2's fully_shard)."""
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of an unsharded model as CPU tensors."""
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}


def _full_state_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _full_sharded_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Gather an FSDP2 model's (and optimizer's) full state on rank 0 as CPU tensors; {} / None elsewhere.

    A collective. The optimizer state is keyed by parameter name (torch.distributed.checkpoint.state_dict).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _full_state_options(cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = (
        get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    )
    if optim_state is not None and not model_state:
        optim_state = None  # ranks > 0 receive empty dicts
    return model_state, optim_state


def _load_sharded_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any] | None,
) -> None:
    """Scatter full (CPU) states into an FSDP2 model and its optimizer; every rank passes the full state."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    options = _full_state_options()
    set_model_state_dict(model, model_state, options=options)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def _save_model_state(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors refuses tensors that share memory: store each storage view once, record the aliases."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        view = (ptr, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if ptr is not None and view in seen:
            aliases[name] = seen[view]
            continue
        if ptr is not None and ptr in storages:
            tensor = tensor.clone()  # a different view of shared memory: store its own copy
        elif ptr is not None:
            seen[view] = name
            storages.add(ptr)
        unique[name] = tensor.contiguous()
    save_file(unique, str(path), metadata={"aliases": json.dumps(aliases)})
    _fsync(path)


def _load_model_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        aliases = json.loads((fh.metadata() or {}).get("aliases", "{}"))
    for name, source in aliases.items():
        tensors[name] = tensors[source]
    return tensors


def _torch_save(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    _fsync(path)


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems cannot fsync a directory; the rename itself is still atomic
        pass


def _is_collective(state: ParallelState) -> bool:
    return state.distributed and dist.is_available() and dist.is_initialized()


def _gather_on_rank0(obj: Any, state: ParallelState) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on rank 0; [] elsewhere. [obj] without a process group."""
    if not _is_collective(state):
        return [obj]
    gathered: list[Any] | None = [None] * state.world_size if state.rank == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered or []


def _tell_others(failure: str | None, state: ParallelState) -> str | None:
    """Broadcast rank 0's outcome (None = written) so no rank goes on past a checkpoint that does not exist."""
    if not _is_collective(state):
        return failure
    box = [failure]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _few(names: list[str], limit: int = 3) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
