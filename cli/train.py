"""`longrl train sft|rl`: CoT-SFT and GRPO runs from flags and/or a YAML config.

Precedence: config defaults < `--config run.yaml` < `--set key=value` < the named flags. Only flags the user
actually gives override anything (every named flag defaults to "not given"), so a YAML value survives unless
its flag is on the command line. `--nproc N` (or `--nnodes`) re-runs the command under torchrun; inside a
torchrun worker the command runs in-process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Train a video VLM: CoT-SFT (`sft`) and GRPO (`rl`).", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="train")


# Options shared by both commands. Each is None unless given, so it does not clobber the YAML.
Config = Annotated[Path | None, typer.Option("--config", help="YAML run config; flags override its values.")]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any config key as KEY=VALUE, e.g. --set optim.warmup_steps=10 (repeatable)."),
]
ModelPath = Annotated[str | None, typer.Option("--model", help="Local HF model folder (model.path).")]
DataPath = Annotated[str | None, typer.Option("--data", help="Training rows, JSON or JSONL (data.train).")]
VideoRoot = Annotated[
    str | None,
    typer.Option(help="Folder the rows' video paths are relative to (default: the data file's folder)."),
]
Out = Annotated[str | None, typer.Option("--out", help="Run folder (run.out; default: runs/latest).")]
Steps = Annotated[int | None, typer.Option(help="Optimizer steps (run.steps; default: 100).")]
LR = Annotated[float | None, typer.Option("--lr", help="Peak learning rate (optim.lr; default: 1e-5).")]
Frames = Annotated[int | None, typer.Option(help="Frames per video (data.frames; default: 64).")]
Fps = Annotated[float | None, typer.Option(help="Sample frames at this rate instead of --frames (data.fps).")]
SP = Annotated[
    int | None, typer.Option("--sp", help="Sequence-parallel size; divides the world size (default: 1).")
]
SPAttn = Annotated[str | None, typer.Option(help="SP attention: ring, ulysses or auto (default: ring).")]
NProc = Annotated[int | None, typer.Option(help="Processes per node; > 1 starts torchrun (default: 1).")]
NNodes = Annotated[
    int | None, typer.Option(help="Nodes of a multi-node run (torchrun rendezvous) (default: 1).")
]
NodeRank = Annotated[int | None, typer.Option(help="This node's rank in a multi-node run.")]
Rdzv = Annotated[
    str | None, typer.Option(help="HOST:PORT of the multi-node rendezvous (same on every node).")
]
RdzvId = Annotated[str | None, typer.Option(help="Rendezvous id of a multi-node run.")]
OnBadRow = Annotated[
    str | None,
    typer.Option(
        help="skip (count bad rows and unreadable videos) or fail (stop at the first) (default: skip)."
    ),
]
EmbedCache = Annotated[
    str | None,
    typer.Option(
        help="Disk folder for cached video embeddings (data.embed_cache_dir; default: memory only)."
    ),
]
VideoBackend = Annotated[
    str | None, typer.Option(help="Video decoder: auto, decord or pyav (default: auto).")
]
Resume = Annotated[
    str | None,
    typer.Option(help="auto (continue from the latest checkpoint in --out) or a checkpoint folder."),
]
Seed = Annotated[
    int | None, typer.Option(help="Seed of data order, sampling and initialization (default: 0).")
]
SaveEvery = Annotated[
    int | None, typer.Option(help="Checkpoint every N steps; 0 = only at the end (default: 50).")
]
TensorBoard = Annotated[
    bool | None, typer.Option("--tensorboard/--no-tensorboard", help="Also write TensorBoard logs.")
]
LoraRank = Annotated[
    int | None, typer.Option(help="LoRA rank on the language model; 0 = full fine-tuning (default: 0).")
]
GradCkpt = Annotated[
    bool | None,
    typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in backward."
    ),
]
TrainVision = Annotated[
    bool | None,
    typer.Option("--train-vision/--freeze-vision", help="Train the vision tower too (default: frozen)."),
]
Device = Annotated[str | None, typer.Option(help="auto, cpu or cuda (default: auto).")]
Fsdp = Annotated[
    bool | None,
    typer.Option(
        "--fsdp/--no-fsdp",
        help="Shard policy and reference over the dp ranks with FSDP2 (parallel.fsdp; default: auto = on "
        "with CUDA and more than one dp rank).",
    ),
]
BatchSize = Annotated[
    int | None, typer.Option(help="Per dp rank: sequences (sft) or prompts (rl) per step (default: 4).")
]


def _common(**flags: Any) -> dict[str, Any]:
    """Dotted overrides of the flags shared by both commands (None values = not given, skipped later)."""
    keys = {
        "model": "model.path", "data": "data.train", "video_root": "data.video_root", "out": "run.out",
        "steps": "run.steps", "lr": "optim.lr", "frames": "data.frames", "fps": "data.fps", "sp": "parallel.sp",
        "sp_attn": "parallel.sp_attn", "nproc": "parallel.nproc", "nnodes": "parallel.nnodes",
        "node_rank": "parallel.node_rank", "rdzv_endpoint": "parallel.rdzv_endpoint", "rdzv_id": "parallel.rdzv_id",
        "on_bad_row": "data.on_bad_row", "embed_cache_dir": "data.embed_cache_dir",
        "video_backend": "data.video_backend", "resume": "run.resume", "seed": "run.seed",
        "save_every": "run.save_every", "tensorboard": "run.tensorboard", "lora_rank": "model.lora.rank",
        "gradient_checkpointing": "model.gradient_checkpointing", "train_vision": "model.train_vision",
        "device": "run.device", "batch_size": "batch_size", "fsdp": "parallel.fsdp",
    }  # fmt: skip
    return {keys[name]: value for name, value in flags.items()}


def parse_sets(sets: list[str] | None) -> dict[str, str]:
    """["optim.lr=1e-4", ...] -> {"optim.lr": "1e-4"}; ConfigError for an item without '='."""
    from longrl.errors import ConfigError

    out: dict[str, str] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.warmup_steps=10")
        out[key.strip()] = value.strip()
    return out


def build_config(cls: type, config: Path | None, sets: list[str] | None, flags: dict[str, Any]):
    """Defaults < YAML < --set < named flags; a flag left at None is skipped by load_config."""
    from longrl.train.config_io import load_config

    return load_config(cls, config, {**parse_sets(sets), **{k: v for k, v in flags.items() if v is not None}})


def launch(cfg: Any, kind: str) -> None:
    """Check the inputs, re-run under torchrun when this command must start the workers, else train here."""
    from longrl.cli.launch import relaunch_under_torchrun, torchrun_args, under_torchrun

    from longrl.errors import ConfigError
    from longrl.train.setup import check_inputs

    check_inputs(cfg)  # once, before N workers would each report the same mistake
    par = cfg.parallel
    if not under_torchrun() and (par.nproc > 1 or par.nnodes > 1):
        extra = torchrun_args(
            nnodes=par.nnodes, node_rank=par.node_rank, rdzv_endpoint=par.rdzv_endpoint, rdzv_id=par.rdzv_id
        )
        code = relaunch_under_torchrun(par.nproc, extra)
        if code is None:  # relaunch_under_torchrun starts nothing for one process per node
            raise ConfigError(
                "--nnodes > 1 with one process per node: start it with torchrun on every node, e.g. "
                "`torchrun --nnodes N --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT "
                "-m longrl.cli.app train ...`"
            )
        raise typer.Exit(code)
    if kind == "sft":
        from longrl.sft.trainer import run_sft

        run_sft(cfg)
    else:
        from longrl.rl.trainer import run_rl

        run_rl(cfg)


@app.command("sft")
def sft(
    config: Config = None, set_: Sets = None, model: ModelPath = None, data: DataPath = None,
    video_root: VideoRoot = None, out: Out = None, steps: Steps = None, lr: LR = None,
    batch_size: BatchSize = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro batches per optimizer step (default: 1).")] = None,
    max_response_tokens: Annotated[
        int | None, typer.Option(help="Longer responses are truncated (default: 512).")
    ] = None,
    frames: Frames = None, fps: Fps = None, sp: SP = None, sp_attn: SPAttn = None, nproc: NProc = None,
    nnodes: NNodes = None, node_rank: NodeRank = None, rdzv_endpoint: Rdzv = None, rdzv_id: RdzvId = None,
    on_bad_row: OnBadRow = None, embed_cache_dir: EmbedCache = None, video_backend: VideoBackend = None,
    resume: Resume = None, seed: Seed = None, save_every: SaveEvery = None, tensorboard: TensorBoard = None,
    lora_rank: LoraRank = None, gradient_checkpointing: GradCkpt = None, train_vision: TrainVision = None,
    device: Device = None, fsdp: Fsdp = None,
) -> None:  # fmt: skip
    """CoT-SFT: response-only loss on <think>{reasoning}</think><answer>{answer}</answer>."""
    from longrl.train.config import SFTConfig

    flags = _common(
        model=model, data=data, video_root=video_root, out=out, steps=steps, lr=lr, frames=frames, fps=fps,
        sp=sp, sp_attn=sp_attn, nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
        rdzv_id=rdzv_id, on_bad_row=on_bad_row, embed_cache_dir=embed_cache_dir, video_backend=video_backend,
        resume=resume, seed=seed, save_every=save_every, tensorboard=tensorboard, lora_rank=lora_rank,
        gradient_checkpointing=gradient_checkpointing, train_vision=train_vision, device=device,
        batch_size=batch_size, fsdp=fsdp,
    )  # fmt: skip
    flags |= {"grad_accum": grad_accum, "max_response_tokens": max_response_tokens}
    launch(build_config(SFTConfig, config, set_, flags), "sft")


@app.command("rl")
def rl(
    config: Config = None, set_: Sets = None, model: ModelPath = None, data: DataPath = None,
    video_root: VideoRoot = None, out: Out = None, steps: Steps = None, lr: LR = None,
    batch_size: BatchSize = None,
    n: Annotated[int | None, typer.Option("--n", "--num-generations", help="Responses per prompt (default: 8).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: 1.0).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling (default: 1.0).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Response length cap (default: 256).")] = None,
    engine: Annotated[str | None, typer.Option(help="Rollout engine: hf or vllm (default: hf).")] = None,
    advantage: Annotated[str | None, typer.Option(help="grpo, dr_grpo or rloo (default: grpo).")] = None,
    kl_coef: Annotated[float | None, typer.Option(help="Weight of the KL-to-reference loss (default: 0).")] = None,
    kl_estimator: Annotated[str | None, typer.Option(help="k1, k2 or k3 (default: k3).")] = None,
    clip_low: Annotated[float | None, typer.Option(help="Lower clip range of the ratio (default: 0.2).")] = None,
    clip_high: Annotated[float | None, typer.Option(help="Upper clip range (clip-higher) (default: 0.28).")] = None,
    ppo_epochs: Annotated[int | None, typer.Option(help="Update epochs per batch of rollouts (default: 1).")] = None,
    micro_batch_size: Annotated[
        int | None, typer.Option(help="Sequences per forward/backward (default: the whole mini-batch).")
    ] = None,
    agg_mode: Annotated[
        str | None, typer.Option(help="token-mean, seq-mean-token-mean or seq-mean-token-sum (default: token-mean).")
    ] = None,
    dynamic_sampling: Annotated[
        bool | None,
        typer.Option("--dynamic-sampling/--no-dynamic-sampling", help="Drop zero-variance groups and refill."),
    ] = None,
    reward: Annotated[str | None, typer.Option(help="Custom reward as module:function (reward.custom).")] = None,
    ptx: Annotated[
        str | None, typer.Option(help="SFT rows (with reasoning) for PPO-ptx's supervised term (data.ptx).")
    ] = None,
    ptx_coef: Annotated[
        float | None, typer.Option(help="Weight of the PPO-ptx supervised term (default: 0 = off).")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="vLLM's share of the GPU it shares with the trainer (default: 0.5).")
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="vLLM's longest prompt + response (default: from the data and frames).")
    ] = None,
    frames: Frames = None, fps: Fps = None, sp: SP = None, sp_attn: SPAttn = None, nproc: NProc = None,
    nnodes: NNodes = None, node_rank: NodeRank = None, rdzv_endpoint: Rdzv = None, rdzv_id: RdzvId = None,
    on_bad_row: OnBadRow = None, embed_cache_dir: EmbedCache = None, video_backend: VideoBackend = None,
    resume: Resume = None, seed: Seed = None, save_every: SaveEvery = None, tensorboard: TensorBoard = None,
    lora_rank: LoraRank = None, gradient_checkpointing: GradCkpt = None, train_vision: TrainVision = None,
    device: Device = None, fsdp: Fsdp = None,
) -> None:  # fmt: skip
    """GRPO with rule-based rewards; MR-SP with --sp S (S processes share one sequence)."""
    from longrl.train.config import RLConfig

    flags = _common(
        model=model, data=data, video_root=video_root, out=out, steps=steps, lr=lr, frames=frames, fps=fps,
        sp=sp, sp_attn=sp_attn, nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
        rdzv_id=rdzv_id, on_bad_row=on_bad_row, embed_cache_dir=embed_cache_dir, video_backend=video_backend,
        resume=resume, seed=seed, save_every=save_every, tensorboard=tensorboard, lora_rank=lora_rank,
        gradient_checkpointing=gradient_checkpointing, train_vision=train_vision, device=device,
        batch_size=batch_size, fsdp=fsdp,
    )  # fmt: skip
    flags |= {
        "rollout.n": n, "rollout.temperature": temperature, "rollout.top_p": top_p,
        "rollout.max_new_tokens": max_new_tokens, "rollout.engine": engine, "algo.advantage": advantage,
        "algo.kl_coef": kl_coef, "algo.kl_estimator": kl_estimator, "algo.clip_low": clip_low,
        "algo.clip_high": clip_high, "algo.ppo_epochs": ppo_epochs, "algo.agg_mode": agg_mode,
        "algo.dynamic_sampling": dynamic_sampling, "reward.custom": reward,
        "algo.micro_batch_size": micro_batch_size, "rollout.gpu_memory_utilization": gpu_memory_utilization,
        "rollout.max_model_len": max_model_len, "data.ptx": ptx, "algo.ptx_coef": ptx_coef,
    }  # fmt: skip
    launch(build_config(RLConfig, config, set_, flags), "rl")
