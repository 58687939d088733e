"""Run configurations of `longrl train sft` and `longrl train rl`: nested dataclasses, validated on creation.

A config is built by `longrl.train.config_io.load_config(SFTConfig, "run.yaml", overrides)`: YAML first, then
the flags. Every field here is a YAML key (nested: `optim.lr`, `data.frames`, ...). Each `__post_init__` checks
its own ranges and raises ConfigError naming the dotted key, so a bad value is one line whatever its source.
Checks that need the file system or the world size (model folder exists, sp divides the world) happen when the
run starts (`longrl.train.setup`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Literal

from longrl.errors import ConfigError
from longrl.rl.rewards import RewardConfig
from longrl.train.lora import LoRAConfig
from longrl.train.optim import OptimConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
VIDEO_BACKENDS = ("auto", "decord", "pyav")
SP_ATTN = ("ring", "ulysses", "auto")
DEVICES = ("auto", "cpu", "cuda")


def _check_int(key: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def _check_number(key: str, value: object, *, low: float | None = None, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{key} must be {'>' if low_open else '>='} {low}, got {value}")


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class ModelConfig:
    """The policy model.

    path: HF model folder (`longrl models make-tiny` or a Qwen2.5-VL checkpoint). dtype: parameter dtype;
    "auto" = float32 master weights (with bf16 autocast on GPU). train_vision: also train the vision tower
    (then video embeddings are recomputed every step, never cached). gradient_checkpointing: recompute decoder
    layer activations in backward. lora: LoRA adapters (rank 0 = full fine-tuning).
    """

    path: str = ""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    train_vision: bool = False
    gradient_checkpointing: bool = False
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self) -> None:
        _check_choice("model.dtype", self.dtype, DTYPES)
        if self.train_vision and self.lora.rank > 0:
            raise ConfigError("model.train_vision cannot be combined with LoRA (model.lora.rank > 0)")


@dataclass
class DataConfig:
    """Training rows and how their videos become frames.

    train: JSON/JSONL file (released LongVideo-Reason or plain multiple-choice rows). video_root: folder the
    rows' video paths are relative to (None = the data file's folder). on_bad_row: "skip" (count) or "fail"
    (stop at the first, naming it). frames: frames per video; fps: sample at this rate instead (clamped to
    max_frames). embed_cache_dir: disk tier of the video-embedding cache (None = memory only);
    embed_cache_gb: memory tier size. shuffle: a new seeded order each epoch (else file order).
    isolate_decode: decode videos in a child process (a crashing decoder cannot kill the run; costs an
    interpreter start per video, which the embedding cache pays once per video).
    ptx (train rl only): SFT rows (with reasoning, same schema and video root as `train`) for PPO-ptx's
    supervised term, weighted by algo.ptx_coef (`longrl.rl.ptx`); None = no such term.
    """

    train: str = ""
    video_root: str | None = None
    on_bad_row: Literal["skip", "fail"] = "skip"
    frames: int = 64
    fps: float | None = None
    max_frames: int = 768
    video_backend: Literal["auto", "decord", "pyav"] = "auto"
    embed_cache_dir: str | None = None
    embed_cache_gb: float = 4.0
    shuffle: bool = True
    isolate_decode: bool = True
    ptx: str | None = None

    def __post_init__(self) -> None:
        _check_choice("data.on_bad_row", self.on_bad_row, ("skip", "fail"))
        _check_choice("data.video_backend", self.video_backend, VIDEO_BACKENDS)
        _check_int("data.frames", self.frames, 1)
        _check_int("data.max_frames", self.max_frames, 2)
        if self.fps is not None:
            _check_number("data.fps", self.fps, low=0.0, low_open=True)
        _check_number("data.embed_cache_gb", self.embed_cache_gb, low=0.0)


@dataclass
class ParallelConfig:
    """Processes and sequence parallelism.

    nproc: processes per node (> 1 re-launches under torchrun); sp: sequence-parallel size (must divide the
    world size nproc * nnodes); sp_attn: "ring", "ulysses" or "auto" (Ulysses when sp divides the head
    counts). nnodes / node_rank / rdzv_endpoint / rdzv_id: torchrun's multi-node rendezvous. fsdp: shard the
    policy and the reference over the dp ranks with FSDP2 ("auto" = on with CUDA and dp > 1; see
    `longrl.train.fsdp`; summary.json and the checkpoints record whether it was on).
    """

    nproc: int = 1
    sp: int = 1
    sp_attn: Literal["ring", "ulysses", "auto"] = "ring"
    nnodes: int = 1
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    fsdp: Literal["auto"] | bool = "auto"

    def __post_init__(self) -> None:
        _check_int("parallel.nproc", self.nproc, 1)
        if self.fsdp != "auto" and not isinstance(self.fsdp, bool):
            raise ConfigError(f"parallel.fsdp must be auto, true or false, got {self.fsdp!r}")
        _check_int("parallel.sp", self.sp, 1)
        _check_int("parallel.nnodes", self.nnodes, 1)
        if self.node_rank is not None:
            _check_int("parallel.node_rank", self.node_rank, 0)
        _check_choice("parallel.sp_attn", self.sp_attn, SP_ATTN)
        world = self.nproc * self.nnodes
        # Only checkable here when this command starts the world; under an outer torchrun (nproc 1) the
        # world size is known at init_parallel, which checks it again.
        if world > 1 and world % self.sp:
            raise ConfigError(
                f"parallel.sp ({self.sp}) must divide the world size nproc * nnodes = {world}; "
                f"use --sp {_largest_divisor_at_most(world, self.sp)} or change --nproc"
            )


def _largest_divisor_at_most(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


@dataclass
class RunConfig:
    """The run folder, its length, checkpoints and logging.

    out: run folder (config.yaml, metrics.jsonl, checkpoints/, final/, summary.json). steps: optimizer steps.
    save_every: checkpoint every K steps (0 = only at the end); keep_last: checkpoints kept. resume: "auto"
    (latest checkpoint in out, or start fresh) or a checkpoint folder. log_every: metrics row every K steps.
    device: "auto" (cuda when present), "cpu" or "cuda".
    """

    out: str = "runs/latest"
    steps: int = 100
    save_every: int = 50
    keep_last: int = 2
    seed: int = 0
    resume: str | None = None
    log_every: int = 1
    tensorboard: bool = False
    progress: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.out, str) or not self.out.strip():
            raise ConfigError("run.out must be a folder path (--out RUN)")
        _check_int("run.steps", self.steps, 1)
        _check_int("run.save_every", self.save_every, 0)
        _check_int("run.keep_last", self.keep_last, 1)
        _check_int("run.seed", self.seed, 0)
        _check_int("run.log_every", self.log_every, 1)
        _check_choice("run.device", self.device, DEVICES)
        if self.resume is not None and not str(self.resume).strip():
            raise ConfigError("run.resume must be 'auto' or a checkpoint folder")


@dataclass
class SFTConfig:
    """CoT-SFT: response-only cross-entropy on `<think>{reasoning}</think><answer>{answer}</answer>`.

    batch_size: sequences per dp rank per micro step; grad_accum: micro steps per optimizer step (one optimizer
    step sees batch_size * grad_accum * dp sequences). max_response_tokens: longer responses are truncated
    (the loss then covers their first tokens only; the count is in the summary).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    batch_size: int = 4
    grad_accum: int = 1
    max_response_tokens: int = 512

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, 1)
        _check_int("grad_accum", self.grad_accum, 1)
        _check_int("max_response_tokens", self.max_response_tokens, 1)
        if self.data.ptx is not None:
            raise ConfigError(
                "data.ptx is for `train rl` (PPO-ptx's supervised rows); SFT trains on data.train"
            )


@dataclass
class RolloutConfig:
    """Sampling of the G responses per prompt.

    engine: "hf" or "vllm" (`longrl.rollout.engine_class`). n: responses per prompt (the GRPO group size).
    top_k 0 = off. prompt_batch_size: prompts per engine call (None = the whole step batch).
    vLLM only (docs/vllm.md): gpu_memory_utilization: vLLM's share of the GPU it shares with the trainer
    (None = 0.5; on CPU, where it means a share of host RAM, None = a fixed 2 GiB KV cache); max_model_len:
    longest prompt + response (None = the run's longest possible prompt + max_new_tokens,
    `longrl.rollout.vllm.rollout_max_model_len`); enforce_eager: no CUDA graphs / compilation (None = on
    CPU only).
    """

    engine: str = "hf"
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    prompt_batch_size: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enforce_eager: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.engine, str) or not self.engine:
            raise ConfigError(f"rollout.engine must be an engine name (hf, vllm), got {self.engine!r}")
        _check_int("rollout.n", self.n, 1)
        _check_number("rollout.temperature", self.temperature, low=0.0, low_open=True)
        _check_number("rollout.top_p", self.top_p, low=0.0, low_open=True)
        if self.top_p > 1:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        _check_int("rollout.top_k", self.top_k, 0)
        _check_int("rollout.max_new_tokens", self.max_new_tokens, 1)
        if self.prompt_batch_size is not None:
            _check_int("rollout.prompt_batch_size", self.prompt_batch_size, 1)
        if self.gpu_memory_utilization is not None:
            _check_number(
                "rollout.gpu_memory_utilization", self.gpu_memory_utilization, low=0.0, low_open=True
            )
            if self.gpu_memory_utilization > 1:
                raise ConfigError(
                    f"rollout.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
                )
        if self.max_model_len is not None:
            _check_int("rollout.max_model_len", self.max_model_len, 1)
            if self.max_model_len <= self.max_new_tokens:
                raise ConfigError(
                    f"rollout.max_model_len ({self.max_model_len}) must exceed rollout.max_new_tokens "
                    f"({self.max_new_tokens}): it holds the prompt, video included, and the response"
                )
        if self.enforce_eager is not None and not isinstance(self.enforce_eager, bool):
            raise ConfigError(f"rollout.enforce_eager must be true or false, got {self.enforce_eager!r}")


@dataclass
class AlgoConfig:
    """GRPO: advantages, the clipped surrogate, KL to the reference, PPO epochs, dynamic sampling, TIS.

    clip_low / clip_high: ratio clipped to [1 - clip_low, 1 + clip_high] (clip-higher); dual_clip: lower bound
    c of the dual clip for negative advantages (None = off). kl_coef: weight of the KL loss term (0 = no
    reference model). mini_batch_size: sequences per optimizer step within a PPO epoch (None = whole batch).
    micro_batch_size: sequences per forward/backward inside a mini-batch (None = the whole mini-batch; long
    videos want 1: the gradient is the same, only peak memory changes).
    dynamic_sampling: drop groups with zero reward variance and draw more prompts, up to max_refill_rounds.
    tis: truncated importance sampling with the engine's logprobs ("auto" = when the engine is not "hf"),
    weights capped at tis_cap.
    ptx_coef: weight of PPO-ptx's supervised term on the data.ptx rows (0 = off; `longrl.rl.ptx`);
    ptx_batch_size: ptx rows per dp rank per optimizer step (None = batch_size), scored in micro-batches of
    micro_batch_size.
    """

    advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 3.0
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    ppo_epochs: int = 1
    mini_batch_size: int | None = None
    micro_batch_size: int | None = None
    dynamic_sampling: bool = False
    max_refill_rounds: int = 3
    tis: Literal["auto", "on", "off"] = "auto"
    tis_cap: float = 2.0
    ptx_coef: float = 0.0
    ptx_batch_size: int | None = None

    def __post_init__(self) -> None:
        _check_choice("algo.advantage", self.advantage, ("grpo", "dr_grpo", "rloo"))
        _check_number("algo.clip_low", self.clip_low, low=0.0)
        _check_number("algo.clip_high", self.clip_high, low=0.0)
        if self.clip_low >= 1:
            raise ConfigError(f"algo.clip_low must be < 1, got {self.clip_low}")
        if self.dual_clip is not None:
            _check_number("algo.dual_clip", self.dual_clip)
            if self.dual_clip <= 1:
                raise ConfigError(
                    f"algo.dual_clip must be > 1 (or null to turn it off), got {self.dual_clip}"
                )
        _check_number("algo.kl_coef", self.kl_coef, low=0.0)
        _check_choice("algo.kl_estimator", self.kl_estimator, ("k1", "k2", "k3"))
        _check_choice(
            "algo.agg_mode", self.agg_mode, ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
        )
        _check_int("algo.ppo_epochs", self.ppo_epochs, 1)
        if self.mini_batch_size is not None:
            _check_int("algo.mini_batch_size", self.mini_batch_size, 1)
        if self.micro_batch_size is not None:
            _check_int("algo.micro_batch_size", self.micro_batch_size, 1)
        _check_int("algo.max_refill_rounds", self.max_refill_rounds, 0)
        _check_choice("algo.tis", self.tis, ("auto", "on", "off"))
        _check_number("algo.tis_cap", self.tis_cap, low=1.0)
        _check_number("algo.ptx_coef", self.ptx_coef, low=0.0)
        if self.ptx_batch_size is not None:
            _check_int("algo.ptx_batch_size", self.ptx_batch_size, 1)


@dataclass
class RLConfig:
    """GRPO training. batch_size: prompts per step per dp rank (each gets rollout.n responses)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    batch_size: int = 4

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, 1)
        if self.algo.ptx_coef > 0 and self.data.ptx is None:
            raise ConfigError(
                "algo.ptx_coef > 0 needs data.ptx: a file of SFT rows (with reasoning) for the supervised term"
            )
        if self.data.ptx is not None and not self.algo.ptx_coef:
            raise ConfigError("data.ptx is set but algo.ptx_coef is 0: give the supervised term a weight")
        if self.algo.ptx_batch_size is not None and not self.algo.ptx_coef:
            raise ConfigError("algo.ptx_batch_size is set but PPO-ptx is off (algo.ptx_coef is 0)")
