"""Everything a training run needs before its first step, and what it leaves behind after its last.

    ctx = setup_run(cfg, kind="sft")        # parallel state, run folder, model, data, optimizer, resume
    for step in range(ctx.start_step + 1, cfg.run.steps + 1):
        ...                                 # the trainer's own step
        if ctx.should_save(step): ctx.save(step)
    finish_run(ctx, final_metrics)          # final HF folder + summary.json

The run folder (`run.out`) holds config.yaml (the effective config), metrics.jsonl, checkpoints/, final/
and summary.json. A run never writes into a folder holding anything else: a folder that is not empty is
accepted only when it holds nothing but these names (a run of ours), and then only with `--resume auto`
(continue from its latest checkpoint, or start over when it has none) or `--resume CHECKPOINT`.

Precision: float32 parameters everywhere by default (model.dtype "auto"); on a GPU the forward passes run
under bf16 autocast (`ctx.autocast()`), on the CPU in float32, which keeps CPU runs exactly reproducible.

Sharding: with parallel.fsdp (resolved here; "auto" = CUDA and dp > 1) the policy is wrapped with FSDP2
(`longrl.train.fsdp.shard_model`) before its optimizer is built; checkpoints gather and scatter the shards,
and the final HF folder is gathered to rank 0. On `--resume` the saved config.yaml is compared with the new
one (`longrl.train.resume`): fixed keys refuse, other changes are printed and recorded (`config_changes`).
"""

from __future__ import annotations

import contextlib
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from longrl.atomic import write_text_atomic
from longrl.errors import ConfigError, DataError
from longrl.train.config import RLConfig, SFTConfig

if TYPE_CHECKING:
    from torch import nn

    from longrl.data.dataset import LoadReport
    from longrl.data.schema import Example
    from longrl.models.base import ModelAdapter
    from longrl.models.embedding_store import EmbeddingStore
    from longrl.parallel.groups import ParallelState
    from longrl.rollout.prompts import VideoSource
    from longrl.train.data import TrainData
    from longrl.train.metrics import MetricsLogger

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
UNREADABLE_VIDEOS = "unreadable_videos"  # rows skipped at run time because their video failed to decode
FINAL_DIR = "final"
# What a run of ours writes into its folder; anything else there means the folder is someone else's.
RUN_FILES = frozenset({CONFIG_FILE, "metrics.jsonl", "checkpoints", FINAL_DIR, SUMMARY_FILE, "tensorboard"})


@dataclass
class TrainContext:
    """The state of one training run on this process (see `setup_run`).

    model: the HF module (`adapter.model`) whose parameters the optimizer updates; lora_modules: the names
    of the LoRA-wrapped layers ([] = full fine-tuning). sp_attn: "ring" or "ulysses" (resolved). start_step:
    optimizer steps already done (0 for a fresh run). trainer_state: what the resumed checkpoint saved
    ({} when fresh). counts: run-time problems by name (e.g. "unreadable_videos"), reported in summary.json.
    ptx_data / ptx_report: this rank's stream of data.ptx rows (train rl with PPO-ptx) and what loading
    them did, else None.
    """

    cfg: SFTConfig | RLConfig
    kind: str
    state: ParallelState
    run_dir: Path
    adapter: ModelAdapter
    tokenizer: Any
    video_config: Any
    lora_modules: list[str]
    store: EmbeddingStore | None
    source: VideoSource
    optimizer: torch.optim.Optimizer
    scheduler: Any
    metrics: MetricsLogger
    data: TrainData
    load_report: LoadReport
    sp_attn: str
    start_step: int = 0
    resumed_from: Path | None = None
    trainer_state: dict[str, Any] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # first few run-time problems, verbatim
    owns_process_group: bool = False  # setup_run started the process group, close_run ends it
    # Allowed config changes of every resume so far: {"step", "key", "old", "new"} (see longrl.train.resume).
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    ptx_data: TrainData | None = None
    ptx_report: LoadReport | None = None

    @property
    def model(self) -> nn.Module:
        return self.adapter.model

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def is_main(self) -> bool:
        return self.state.rank == 0

    @property
    def fsdp(self) -> bool:
        """True when the policy is sharded with FSDP2 (`longrl.train.fsdp`; parallel.fsdp)."""
        from longrl.train.fsdp import is_sharded

        return is_sharded(self.model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for forward passes on a GPU with float32 weights; nothing on the CPU."""
        if self.device.type == "cuda" and self.adapter.dtype == torch.float32:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def should_save(self, step: int) -> bool:
        every = self.cfg.run.save_every
        return step == self.cfg.run.steps or (every > 0 and step % every == 0)

    def note_problem(self, kind: str, message: str, keep: int = 10) -> None:
        """Count a run-time problem (e.g. an unreadable video) and keep the first few messages."""
        self.counts[kind] += 1
        if len(self.problems) < keep:
            self.problems.append(message)

    def skip_unreadable(
        self, data: TrainData, path: str, label: str = "row"
    ) -> Callable[[Example, str], None]:
        """The `on_failed(example, reason)` of a stream of rows read from `path`: with --on-bad-row fail a
        DataError naming the row, else the row is excluded from `data` for good and counted under
        UNREADABLE_VIDEOS ("{label} id ...: reason" among the problems)."""

        def on_failed(example: Example, reason: str) -> None:
            if self.cfg.data.on_bad_row == "fail":
                raise DataError(f"{path}: row id {example.id!r}: unreadable video: {reason}")
            data.exclude(example)
            self.note_problem(UNREADABLE_VIDEOS, f"{label} id {example.id!r}: {reason}")

        return on_failed

    def save(self, step: int, extra: dict[str, Any] | None = None) -> Path:
        """Checkpoint after optimizer step `step` (a collective): model, optimizer, scheduler, every rank's
        RNG and data position, the problem counts, plus `extra` (JSON-able)."""
        from longrl.train.checkpoint import save_checkpoint
        from longrl.train.config_io import config_to_dict
        from longrl.train.data import gather_positions

        trainer_state = {
            "step": step,
            "kind": self.kind,
            "data_positions": gather_positions(self.data, self.state),
            "ptx_positions": gather_positions(self.ptx_data, self.state)
            if self.ptx_data is not None
            else None,
            "counts": _gather_counts(self.counts, self.state),
            "problems": self.problems,
            "config_changes": self.config_changes,
            "config": config_to_dict(self.cfg),  # what a resume from this checkpoint compares against
            **(extra or {}),
        }
        return save_checkpoint(
            self.run_dir,
            step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            trainer_state=trainer_state,
            state=self.state,
            keep_last=self.cfg.run.keep_last,
        )


def _gather_counts(counts: Counter, state: ParallelState) -> list[dict[str, int]]:
    """Every rank's counts (rank order); counts of sp ranks of a replica are equal, summaries use dp ranks."""
    mine = dict(counts)
    if not state.distributed:
        return [mine]
    import torch.distributed as dist

    everyone: list[Any] = [None] * state.world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def _total_counts(per_rank: list[dict[str, int]], state: ParallelState) -> dict[str, int]:
    total: Counter = Counter()
    for d in range(state.dp_size):  # one sp rank per replica: the others saw the same videos
        total.update(per_rank[d * state.sp_size] if d * state.sp_size < len(per_rank) else {})
    return dict(total)


# ---------------------------------------------------------------------------------------------------------
# setup


def check_inputs(cfg: SFTConfig | RLConfig) -> None:
    """File-system checks of a config, before anything is started: one ConfigError naming the flag."""
    from longrl.models.loading import read_model_config

    if not cfg.model.path:
        raise ConfigError(
            "no model: pass --model PATH (a local HF model folder, e.g. `longrl models make-tiny`)"
        )
    read_model_config(cfg.model.path)  # ModelError naming the folder
    if not cfg.data.train:
        raise ConfigError("no training data: pass --data FILE (a JSON or JSONL file of rows)")
    if not Path(cfg.data.train).is_file():
        raise ConfigError(f"data file {cfg.data.train} not found; pass --data FILE")
    if cfg.data.ptx is not None and not Path(cfg.data.ptx).is_file():
        raise ConfigError(
            f"ptx data file {cfg.data.ptx} not found; pass --ptx FILE (SFT rows with reasoning)"
        )
    if cfg.data.video_root is not None and not Path(cfg.data.video_root).is_dir():
        raise ConfigError(f"video root {cfg.data.video_root} is not a folder; pass --video-root DIR")
    if cfg.run.resume not in (None, "auto") and not Path(cfg.run.resume).is_dir():
        raise ConfigError(
            f"checkpoint {cfg.run.resume} does not exist; pass --resume auto or a checkpoint folder"
        )


def _init_parallel(cfg: SFTConfig | RLConfig) -> ParallelState:
    from longrl.parallel.groups import init_parallel

    backend = "gloo" if cfg.run.device == "cpu" else None
    state = init_parallel(cfg.parallel.sp, backend=backend)
    if cfg.run.device == "cpu" and state.device.type != "cpu":
        raise ConfigError("--device cpu needs the gloo backend; this run's process group uses GPUs")
    return state


def _device(cfg: SFTConfig | RLConfig, state: ParallelState) -> torch.device:
    from longrl.devices import resolve_device

    if state.distributed:
        return state.device  # cuda:LOCAL_RANK under NCCL, cpu under gloo
    return resolve_device(cfg.run.device)


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start; ConfigError when the folder is not ours or
    holds a run that was not asked to be resumed."""
    from longrl.train.checkpoint import latest_checkpoint

    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} is a file; pass --out DIR")
    present = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    foreign = [name for name in present if name not in RUN_FILES]
    if foreign:
        raise ConfigError(
            f"run folder {run_dir} holds files that are not from a longrl run ({', '.join(foreign[:3])}); "
            "choose a new or empty --out folder"
        )
    latest = latest_checkpoint(run_dir)
    if resume is None:
        if present:
            hint = "pass --resume auto to continue it" if latest else "pass --resume auto to start it over"
            raise ConfigError(f"run folder {run_dir} is not empty; {hint}, or choose a new --out folder")
        return None
    if resume == "auto":
        return latest
    return Path(resume)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _sampling(cfg: SFTConfig | RLConfig):
    from longrl.video.sampling import SamplingConfig

    if cfg.data.fps is not None:
        return SamplingConfig(fps=cfg.data.fps, max_frames=cfg.data.max_frames)
    return SamplingConfig(num_frames=cfg.data.frames)


def setup_run(cfg: SFTConfig | RLConfig, kind: str) -> TrainContext:
    """Start a run: parallel state, run folder, data, model (+ LoRA, checkpointing, vision tower), embedding
    store, optimizer + scheduler, metrics logger, and resume from a checkpoint when asked.

    kind: "sft" or "rl" (recorded in checkpoints; a checkpoint of the other kind is refused). Every
    problem a user can cause is a one-line LongRLError raised before any training starts.
    """
    if kind not in ("sft", "rl"):
        raise ValueError(f"kind must be 'sft' or 'rl', got {kind!r}")
    from longrl.models.embedding_store import EmbeddingStore
    from longrl.models.loading import load_model, parse_dtype
    from longrl.parallel.sp_attention import resolve_sp_attn
    from longrl.rollout.prompts import VideoSource
    from longrl.train.checkpoint import load_checkpoint
    from longrl.train.config_io import config_to_dict, save_config
    from longrl.train.data import load_train_data, restore_positions
    from longrl.train.fsdp import resolve_fsdp, shard_model
    from longrl.train.lora import apply_lora
    from longrl.train.metrics import MetricsLogger
    from longrl.train.optim import apply_optim_config, build_optimizer, build_scheduler
    from longrl.train.resume import check_resume_config

    check_inputs(cfg)
    import torch.distributed as dist
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars from every rank would drown the step rows

    had_group = dist.is_available() and dist.is_initialized()
    state = _init_parallel(cfg)
    device = _device(cfg, state)
    use_fsdp = resolve_fsdp(cfg.parallel.fsdp, state, device)  # a resume must keep it: checkpoint.py checks
    run_dir = Path(cfg.run.out)
    resume_from = resolve_resume(run_dir, cfg.run.resume)
    changes = []
    if resume_from is not None:  # the config of the run that wrote the checkpoint
        changes = check_resume_config(
            resume_from, config_to_dict(cfg), saved_file=resume_from.parent.parent / CONFIG_FILE
        )
    _barrier(state)  # every rank has looked at the folder before rank 0 writes into it

    seed_everything(cfg.run.seed)  # the same on every rank: LoRA initialization must agree
    data, report = load_train_data(
        cfg.data,
        seed=cfg.run.seed,
        dp_rank=state.dp_rank,
        dp_size=state.dp_size,
        require_reasoning=kind == "sft",
    )
    ptx_data = ptx_report = None
    if kind == "rl" and cfg.data.ptx is not None:
        # Its own seeded order (seed + 1), so it does not walk in step with the prompts when both files match.
        ptx_data, ptx_report = load_train_data(
            replace(cfg.data, train=cfg.data.ptx),
            seed=cfg.run.seed + 1,
            dp_rank=state.dp_rank,
            dp_size=state.dp_size,
            require_reasoning=True,
        )

    dtype = "float32" if cfg.model.dtype == "auto" else cfg.model.dtype
    parse_dtype(dtype)
    loaded = load_model(cfg.model.path, dtype=dtype, device=device, vision_trainable=False)
    adapter = loaded.adapter
    lora_modules = apply_lora(adapter.model, cfg.model.lora)
    # apply_lora freezes everything but the adapters; without LoRA the whole language model trains.
    if not lora_modules:
        for p in adapter.model.parameters():
            p.requires_grad_(True)
    adapter.set_vision_trainable(cfg.model.train_vision)
    if cfg.model.gradient_checkpointing:
        adapter.model.activation_checkpointing_enable()
    adapter.model.train()
    if use_fsdp:  # before the optimizer: it must hold the sharded parameters
        shard_model(adapter, state, train=True)

    text = adapter.config.get_text_config()
    sp_attn = resolve_sp_attn(
        cfg.parallel.sp_attn, text.num_attention_heads, text.num_key_value_heads, state.sp_size
    )
    store = None
    if not cfg.model.train_vision:
        store = EmbeddingStore.for_adapter(
            adapter,
            capacity_bytes=int(cfg.data.embed_cache_gb * 2**30),
            disk_dir=cfg.data.embed_cache_dir,
        )
    source = VideoSource(
        sampling=_sampling(cfg),
        video_config=loaded.video_config,
        backend=cfg.data.video_backend,
        store=store,
        state=state,
        isolate=cfg.data.isolate_decode,
    )

    optimizer = build_optimizer(adapter.model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.run.steps)

    start_step, trainer_state = 0, {}
    if resume_from is not None:
        trainer_state = load_checkpoint(
            resume_from, model=adapter.model, optimizer=optimizer, scheduler=scheduler, state=state
        )
        saved_kind = trainer_state.get("kind", kind)
        if saved_kind != kind:
            raise ConfigError(
                f"checkpoint {resume_from} is from `longrl train {saved_kind}`, not `train {kind}`; "
                "start a new run folder (pass its final/ folder as --model to continue from its weights)"
            )
        start_step = int(trainer_state["step"])
        restore_positions(data, trainer_state["data_positions"])
        if ptx_data is not None:
            if not trainer_state.get("ptx_positions"):
                raise ConfigError(
                    f"checkpoint {resume_from} was written without data.ptx; resume it without PPO-ptx, or "
                    "start a new run folder"
                )
            try:
                restore_positions(ptx_data, trainer_state["ptx_positions"])
            except ConfigError as err:
                raise ConfigError(f"data.ptx (--ptx): {err}") from None
        apply_optim_config(optimizer, scheduler, cfg.optim)  # a resumed run may change the optim section

    metrics = MetricsLogger(
        run_dir,
        enabled=state.rank == 0,
        tensorboard=cfg.run.tensorboard,
        total_steps=cfg.run.steps,
        console_keys=_console_keys(kind),
    )
    if state.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)
        metrics.truncate_after(start_step)
    _barrier(state)

    ctx = TrainContext(
        cfg=cfg,
        kind=kind,
        state=state,
        run_dir=run_dir,
        adapter=adapter,
        tokenizer=loaded.tokenizer,
        video_config=loaded.video_config,
        lora_modules=lora_modules,
        store=store,
        source=source,
        optimizer=optimizer,
        scheduler=scheduler,
        metrics=metrics,
        data=data,
        load_report=report,
        sp_attn=sp_attn,
        start_step=start_step,
        resumed_from=resume_from,
        trainer_state=trainer_state,
        owns_process_group=state.distributed and not had_group,
        ptx_data=ptx_data,
        ptx_report=ptx_report,
    )
    if trainer_state:
        per_rank = trainer_state.get("counts", [])
        if isinstance(per_rank, list) and state.rank < len(per_rank):
            ctx.counts.update(per_rank[state.rank])
        ctx.problems = list(trainer_state.get("problems", []))
        ctx.config_changes = list(trainer_state.get("config_changes", []))
    ctx.config_changes += [change.to_dict(start_step) for change in changes]
    if ctx.is_main:
        for change in changes:
            print(change.line(), flush=True)
    return ctx


def _console_keys(kind: str) -> list[str]:
    if kind == "sft":
        return ["loss", "grad_norm", "lr", "tokens", "time/step"]
    return [
        "reward", "reward/format", "reward/accuracy", "kl", "entropy", "clip_frac", "response_len",
        "time/vision", "time/rollout", "time/ref", "time/update", "cache_hit_rate",
    ]  # fmt: skip


def _barrier(state: ParallelState) -> None:
    if state.distributed:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------------------
# finish


def run_steps(ctx: TrainContext, step_fn: Callable[[int], dict[str, float]], label: str) -> dict[str, float]:
    """The loop both trainers share: steps ctx.start_step + 1 .. cfg.run.steps (1-based, passed to step_fn),
    each logged every run.log_every steps and at the last, checkpointed when due, with a progress bar on the
    main rank. Returns the last step's metrics without the time/ split (what finish_run records)."""
    from longrl.train.metrics import progress

    run = ctx.cfg.run
    last: dict[str, float] = {}
    with progress(run.steps - ctx.start_step, label, enabled=ctx.is_main and run.progress) as bar:
        for step in range(ctx.start_step + 1, run.steps + 1):
            last = step_fn(step)
            if step % run.log_every == 0 or step == run.steps:
                ctx.metrics.log(step, last)
            if ctx.should_save(step):
                ctx.save(step)
            bar.advance()
    return {k: v for k, v in last.items() if not k.startswith("time/")}


def finish_run(ctx: TrainContext, final_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the final HF model folder (LoRA merged, in a copy) to run_dir/final and write summary.json.

    Returns the summary (on every rank; only rank 0 writes). A collective when distributed.
    """
    import copy

    from longrl.models.loading import save_model
    from longrl.train.lora import merge_lora

    counts = _total_counts(_gather_counts(ctx.counts, ctx.state), ctx.state)
    data_report = ctx.load_report.to_dict()
    data_report["skipped"].update(ctx.load_report.skipped)  # reasons added by the trainer (missing_reasoning)
    summary = {
        "kind": ctx.kind,
        "steps": ctx.cfg.run.steps,
        "fsdp": ctx.fsdp,
        "resumed_from": str(ctx.resumed_from) if ctx.resumed_from else None,
        "data": data_report,
        "bad_rows": ctx.load_report.num_skipped,
        UNREADABLE_VIDEOS: counts.get(UNREADABLE_VIDEOS, 0),
        "counts": counts,
        "problems": ctx.problems,
        "config_changes": ctx.config_changes,
        "final_metrics": final_metrics or {},
        "final_model": str(ctx.run_dir / FINAL_DIR),
    }
    if ctx.ptx_report is not None:  # PPO-ptx's rows: their own file, their own accounting
        summary["ptx_data"] = ctx.ptx_report.to_dict()
    # A sharded policy is gathered to rank 0 (a collective) into a plain copy of the model.
    full = _unsharded_copy(ctx) if ctx.fsdp else None
    if ctx.is_main:
        model = ctx.model if full is None else full
        if ctx.lora_modules:
            model = copy.deepcopy(model) if full is None else model
            merge_lora(model)
        save_model(
            model,
            ctx.tokenizer,
            ctx.run_dir / FINAL_DIR,
            processor_config=ctx.adapter.processor_config,
            overwrite=True,
        )
        write_text_atomic(ctx.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    ctx.metrics.close()
    _barrier(ctx.state)
    return summary


def _unsharded_copy(ctx: TrainContext) -> nn.Module | None:
    """The sharded policy's weights in a plain model on rank 0's CPU (None elsewhere); a collective.

    The plain model is built from the policy's config on the meta device (no memory, no disk read), with the
    same LoRA layout, and takes the gathered tensors themselves (`assign`): every saved weight is the
    trained one, in its training dtype. Non-persistent buffers stay on meta; saving never writes them.
    """
    import copy

    from longrl.train.fsdp import full_state_dict
    from longrl.train.lora import apply_lora

    state = full_state_dict(ctx.model)
    if not ctx.is_main:
        return None
    with torch.device("meta"):
        model = ctx.adapter.hf_model_class()._from_config(ctx.model.config)
    apply_lora(model, ctx.cfg.model.lora)
    model.load_state_dict(state, strict=True, assign=True)
    model.generation_config = copy.deepcopy(ctx.model.generation_config)  # the folder's, not the default
    return model


def close_run(ctx: TrainContext) -> None:
    """Close the metrics files and end the process group if `setup_run` started it (safe to call twice)."""
    ctx.metrics.close()
    if ctx.owns_process_group:
        from longrl.parallel.groups import destroy_parallel

        destroy_parallel()
        ctx.owns_process_group = False
