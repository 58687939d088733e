"""`longrl bench rl-step`: one GRPO step with MR-SP against the vanilla pipeline, at several frame counts.

Both variants run the same `longrl.rl.step.grpo_step` (P prompts, each with its own video, G rollouts of a
fixed length (no stop token), rewards, advantages, reference logprobs, one PPO update with AdamW, which is
on-policy, so no separate old-logprob prefill) on the same model and machine. They differ only in how often
the vision tower runs and in sequence parallelism:

- MR-SP: each video is encoded once per step (frames sharded over the sp ranks, gathered, put in a fresh
  embedding cache), every rollout and every prefill reuses the cached embedding, the prefills run
  sequence-parallel over `sp` processes (`run_local`, gloo on CPU, one GPU per rank on CUDA).
- vanilla: no cache and no SP: the video is encoded again for every rollout (each of the G samples is its own
  generate call, as a pipeline that ships pixels with every request does) and for every sequence of every
  prefill (reference, update), like a trainer whose batch carries pixel values.

Each step starts with a cold cache (a step pays for its own encodes), after one warm-up step. The table shows
the median step time, the speed-up of MR-SP over vanilla and the vision-encoder passes per prompt (patches the
tower processed, summed over ranks, over the patches of one video: vanilla G + G * (ref + epochs), MR-SP
1; before the on-policy update skipped the old-logprob prefill, vanilla also paid G for it). On CPU every
rank runs single-threaded, one core standing in for one device: sp = 2 uses two cores where vanilla and
sp = 1 use one (on a shared machine, other processes on those cores show up as noise).

CPU: the tiny Qwen2.5-VL (fp32), frames 32, 64, 128 (quick: 16, 32), P = 2 prompts, G = 8 (quick 4), 32 new
tokens (quick 8). CUDA: a mid-size random model (4 text layers of 2048, an 8-layer 1024-wide vision tower),
bf16 autocast, a larger pixel budget.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from longrl.bench.harness import BenchRow, make_row, report_header

CPU_FRAMES, CPU_QUICK_FRAMES = [32, 64, 128], [16, 32]
CUDA_FRAMES, CUDA_QUICK_FRAMES = [128, 256, 512], [64, 128]
CUDA_TEXT = {
    "num_layers": 4,
    "hidden_size": 2048,
    "num_heads": 16,
    "num_kv_heads": 2,
    "intermediate_size": 5504,
}
CUDA_VISION = {"vision_hidden_size": 1024, "vision_depth": 8, "vision_heads": 16}
VIDEO_SIZE = (160, 120)  # width, height of the synthetic videos
VIDEO_FPS = 8


@dataclass(frozen=True)
class StepShape:
    """What one benchmarked step does: prompts, responses per prompt, tokens per response, KL reference."""

    prompts: int
    n: int
    new_tokens: int
    kl: bool = True
    reps: int = 2


def write_bench_video(path: Path, num_frames: int, seed: int) -> Path:
    """A synthetic mp4 of `num_frames` frames (moving colour gradients, different per seed) at VIDEO_FPS."""
    import av

    width, height = VIDEO_SIZE
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    ys, xs = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            frame = np.stack([(xs * 2 + i * 3 + base[0]) % 256, (ys * 2 + i * 5 + base[1]) % 256,
                              ((xs + ys) + i * 7 + base[2]) % 256], axis=-1).astype(np.uint8)  # fmt: skip
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _model(device: torch.device):
    """(model, tokenizer, video config) of the benchmark model for `device`."""
    import longrl.models as M
    from longrl.models.tiny import TINY_PROCESSOR, tiny_config
    from longrl.video.qwen_layout import QwenVideoConfig

    if device.type != "cuda":
        model, tok = M.tiny(seed=0)
        return model, tok, TINY_PROCESSOR.video
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, tok = M.tiny(seed=0)
    config = tiny_config(tok, **CUDA_TEXT, **CUDA_VISION)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    return model, tok, QwenVideoConfig(min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64)


# ---- the vanilla pipeline's extra encodes --------------------------------------------------------------------


class _PixelBank:
    """Each video's preprocessed pixels, decoded once per step, so vanilla can re-run the tower on them."""

    def __init__(self, adapter, video_config, sampling) -> None:
        self.adapter, self.video_config, self.sampling = adapter, video_config, sampling
        self.by_embeds: dict[int, object] = {}  # id(embedding tensor) -> VideoPixels
        self.by_path: dict[str, object] = {}

    def pixels(self, path) -> object:
        from longrl.models.video_inputs import load_video_file

        key = str(Path(path).resolve())  # the cache key's spelling of the path
        if key not in self.by_path:
            self.by_path[key] = load_video_file(
                self.adapter, path, self.sampling, self.video_config, isolate=False
            )
        return self.by_path[key]

    def encode(self, pixels) -> torch.Tensor:
        from longrl.models.video_inputs import encode_pixels

        with torch.no_grad():
            return encode_pixels(self.adapter, pixels).embeds


class _RecordingStore:
    """The vanilla pipeline's 'store': caches nothing (every lookup misses, so every call encodes) and
    remembers which video each fresh embedding came from, for the re-encodes that follow."""

    frozen = True

    def __init__(self, bank: _PixelBank) -> None:
        self.bank = bank
        self.counts = {"hits": 0, "disk_hits": 0, "misses": 0, "bypassed": 0}

    def contains(self, key_parts) -> bool:
        return False

    def get_or_encode(self, key_parts, encode_fn):
        value = encode_fn()
        self.counts["misses"] += 1
        self.bank.by_embeds[id(value.embeds)] = self.bank.pixels(key_parts["video"]["path"])
        return value


class _VanillaEngine:
    """The hf engine, but every sample is its own generate call with its video encoded again."""

    name = "hf"

    def __init__(self, inner, bank: _PixelBank) -> None:
        self.inner, self.bank = inner, bank
        self.adapter = inner.adapter

    def generate(self, batch, params):
        from longrl.rollout.base import RolloutBatch

        results = []
        for i in range(len(batch)):
            pixels = self.bank.by_embeds[id(batch.video_embeds[i])]
            for g in range(params.n):
                # The first sample uses the step's own encode; every further sample encodes again.
                embeds = batch.video_embeds[i] if g == 0 else self.bank.encode(pixels)
                one = RolloutBatch(
                    batch.input_ids[i : i + 1], batch.attention_mask[i : i + 1], [embeds],
                    batch.video_grid_thw[i : i + 1], batch.second_per_grid_ts[i : i + 1],
                )  # fmt: skip
                seed = None if params.seed is None else params.seed + i * params.n + g
                (result,) = self.inner.generate(one, replace(params, n=1, seed=seed))
                results.append(replace(result, prompt_index=i, sample_index=g))
        return results

    def update_weights(self, weights) -> None:
        self.inner.update_weights(weights)

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass


# ---- one variant on one rank -----------------------------------------------------------------------------------


def _count_patches(adapter) -> list[int]:
    """A counter of patch rows the vision tower processes (a forward hook; returns the live one-item list)."""
    counter = [0]

    def hook(_module, args, kwargs, _output):
        hidden = args[0] if args else kwargs.get("hidden_states")
        counter[0] += int(hidden.shape[0])

    adapter.vision_tower.register_forward_hook(hook, with_kwargs=True)
    return counter


def _worker(
    model, tok, video_config, videos: dict[int, list[str]], variant: str, sp: int, shape: StepShape
) -> dict:
    """Time one GRPO step per frame count for `variant` ("mrsp" or "vanilla") on this rank."""
    import longrl.models as M
    from longrl.data.schema import Example
    from longrl.parallel.groups import init_parallel, single_process_state
    from longrl.rl.reference import Reference
    from longrl.rl.step import GRPOSetup, grpo_step
    from longrl.rollout.hf import HFEngine
    from longrl.rollout.prompts import VideoSource
    from longrl.train.config import AlgoConfig, RolloutConfig
    from longrl.video.sampling import SamplingConfig

    state = init_parallel(sp) if "WORLD_SIZE" in os.environ else single_process_state()
    device = (
        state.device if state.distributed else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    adapter = M.wrap_model(model.to(device))
    adapter.set_vision_trainable(False)
    counter = _count_patches(adapter)
    reference = Reference.frozen_copy(adapter) if shape.kl else None
    optimizer = torch.optim.AdamW([p for p in adapter.model.parameters() if p.requires_grad], lr=1e-6)
    engine = HFEngine(adapter, tok, eos_ids=())  # no stop token: every response has new_tokens tokens
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else None

    out = {}
    for frames, paths in videos.items():
        sampling = SamplingConfig(num_frames=frames)
        bank = _PixelBank(adapter, video_config, sampling)
        examples = [Example(f"p{i}", f"What happens in video {i}?", ["it rains", "it snows", "nothing"], "A", "",
                            "bench", "video", Path(p), Path(p).name) for i, p in enumerate(paths)]  # fmt: skip
        setup = GRPOSetup(
            adapter, tok, engine, optimizer, VideoSource(sampling, video_config, state=state, isolate=False),
            state, RolloutConfig(n=shape.n, max_new_tokens=shape.new_tokens),
            AlgoConfig(kl_coef=0.01 if shape.kl else 0.0), reference=reference, max_grad_norm=1.0,
        )  # fmt: skip
        if autocast is not None:
            setup.autocast = autocast
        if variant == "vanilla":
            for path in paths:  # decoded before timing: the timed step decodes once, like MR-SP's
                bank.pixels(path)
            setup.source = replace(setup.source, store=_RecordingStore(bank), state=None)
            setup.engine = _VanillaEngine(engine, bank)
            setup.prefill_videos = lambda part, bank=bank: [
                bank.encode(bank.by_embeds[id(e)]) for e in part.video_embeds
            ]
        times, patches, splits = [], [], []
        for rep in range(shape.reps + 1):  # rep 0 warms up
            if variant == "mrsp":  # a cold cache per step: the step pays its one encode per video
                setup.source = replace(setup.source, store=M.EmbeddingStore.for_adapter(adapter))
            counter[0] = 0
            start = time.perf_counter()
            result = grpo_step(setup, examples, step=rep)
            if cuda:
                torch.cuda.synchronize(device)
            if rep:
                times.append(time.perf_counter() - start)
                patches.append(counter[0])
                splits.append({k: v for k, v in result.metrics.items() if k.startswith("time/")})
        per_video = int(np.prod(bank.pixels(paths[0]).grid_thw))
        out[frames] = {
            "seconds": statistics.median(times),
            "patches": statistics.median(patches),
            "patches_per_video": per_video,
            "video_tokens": per_video // adapter.merge_size**2,
            "split": {k: statistics.median(s[k] for s in splits) for k in splits[0]},
        }
    return out


# ---- the report --------------------------------------------------------------------------------------------


def run_rl_step_benchmark(
    device: torch.device,
    *,
    quick: bool,
    frames: list[int] | None = None,
    sp: int = 1,
    timeout_s: float = 3600.0,
) -> dict:
    """Measure vanilla, MR-SP sp=1 and (sp > 1) MR-SP sp=`sp` at each frame count; the report dict."""
    from longrl.parallel.launch import run_local

    cuda = device.type == "cuda"
    frames = sorted(set(frames or ((CUDA_QUICK_FRAMES if quick else CUDA_FRAMES) if cuda else
                                   (CPU_QUICK_FRAMES if quick else CPU_FRAMES))))  # fmt: skip
    shape = StepShape(prompts=2, n=4 if quick else 8, new_tokens=8 if quick else 32, reps=1 if quick else 3)
    model, tok, video_config = _model(device)
    variants = [("vanilla", 1), ("mrsp", 1)] + ([("mrsp", sp)] if sp > 1 else [])
    results = {}
    with tempfile.TemporaryDirectory(prefix="longrl-bench-rl-") as tmp:
        paths = [
            str(write_bench_video(Path(tmp) / f"v{i}.mp4", max(frames), seed=i)) for i in range(shape.prompts)
        ]
        videos = {f: paths for f in frames}
        for variant, size in variants:
            if cuda and size > torch.cuda.device_count():
                results[(variant, size)] = None
                continue
            # CPU: one thread per rank, as one device per rank (and OpenMP threads of a shared machine's busy
            # cores stall each other far more than single-threaded processes do).
            threads = None if cuda else 1
            per_rank = run_local(_worker, size, model, tok, video_config, videos, variant, size, shape,
                                 timeout_s=timeout_s, threads_per_rank=threads)  # fmt: skip
            results[(variant, size)] = per_rank
    rows = _rows(results, variants, frames, shape, device)
    return {
        **report_header("rl-step", device, quick),
        "frames": frames,
        "prompts": shape.prompts,
        "n": shape.n,
        "new_tokens": shape.new_tokens,
        "kl_reference": shape.kl,
        "sp": sp,
        "rows": [r.to_dict() for r in rows],
    }


def _rows(results, variants, frames, shape: StepShape, device: torch.device) -> list[BenchRow]:
    rows: list[BenchRow] = []
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    for f in frames:
        base = results[("vanilla", 1)][0][f]["seconds"]
        for variant, size in variants:
            per_rank = results[(variant, size)]
            name = "vanilla (re-encode, no SP)" if variant == "vanilla" else f"MR-SP sp={size}"
            if per_rank is None:
                rows.append(make_row("rl_step", name, f"frames={f}", dtype, device, float("nan"),
                                     note=f"skipped: needs {size} GPUs"))  # fmt: skip
                continue
            seconds = max(r[f]["seconds"] for r in per_rank)
            first = per_rank[0][f]
            passes = sum(r[f]["patches"] for r in per_rank) / first["patches_per_video"] / shape.prompts
            split = per_rank[0][f]["split"]
            parts = ", ".join(
                f"{k[5:]} {v:.2f}s" for k, v in split.items() if k != "time/step" and v >= 0.005
            )
            shape_text = f"frames={f} vid_tok={first['video_tokens']} P={shape.prompts} G={shape.n} T={shape.new_tokens}"
            rows.append(
                make_row(
                    "rl_step",
                    name,
                    shape_text,
                    dtype,
                    device,
                    seconds,
                    baseline_seconds=base,
                    note=f"vision passes/prompt {passes:.1f}; rank 0: {parts}",
                )
            )
    return rows
