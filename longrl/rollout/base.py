"""The rollout engine interface: what the RL trainer, the data filter and evaluation call to sample responses.

    engine = HFEngine(adapter, tokenizer)                    # or a vLLM engine; the caller cannot tell
    batch = RolloutBatch.from_video_batch(build_video_batch(adapter, tok, videos, qs, opts), videos)
    results = engine.generate(batch, SamplingParams(n=8, max_new_tokens=512, temperature=1.0, seed=step))
    ids, logprobs, mask = pad_responses(results, tok.pad_token_id)

Which logprobs an engine returns (the contract the trainer relies on): for every sampled token, the log
probability of that token under log_softmax(logits / T) with T = `params.logprob_temperature` (the sampling
temperature; 1.0 for greedy). They are taken BEFORE top-k / top-p truncation, so they are exactly what the
trainer recomputes with `longrl.ops.token_logprobs(hidden, lm_head, targets, temperature=T)` (or
`sp_token_logprobs(..., temperature=T)`) over [prompt | response]; the trainer must pass the same T for the
old, new and reference policies, as verl does. (vLLM: `logprobs_mode="processed_logprobs"` would include the
truncation; the default "raw_logprobs" is at temperature 1. A vLLM engine must convert to this contract.)

Responses include their stop token (finish_reason "stop"): the model must learn to emit it, and its logprob
is part of the policy ratio. `text` leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from longrl.errors import ConfigError
from longrl.models.base import MultimodalInputs

if TYPE_CHECKING:
    from longrl.models.embedding_store import VideoEmbedding
    from longrl.models.video_inputs import VideoBatch

FINISH_STOP = "stop"  # a stop token (eos or one of params.stop_token_ids) was sampled; it ends the response
FINISH_LENGTH = "length"  # max_new_tokens reached without a stop token


@dataclass(frozen=True)
class SamplingParams:
    """How to sample responses.

    n: samples per prompt (the GRPO group size G). max_new_tokens: response length cap (stop token included).
    temperature: logits are divided by it before sampling; 0 means greedy. top_p: nucleus mass kept (1 = off).
    top_k: most likely tokens kept (0 = off; tokens tied with the k-th are kept too). greedy: argmax
    decoding (n samples are then identical). seed: seeds the engine's sampler for this call (None: drawn
    from torch's global RNG, so a globally seeded run is still reproducible). stop_token_ids: extra ids that
    end a response, on top of the engine's eos ids. ignore_eos: never stop early (fixed-length rollouts,
    e.g. for benchmarks).
    """

    n: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"sampling n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:  # also rejects NaN
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """T of the returned logprobs, log_softmax(logits / T): the sampling temperature, 1.0 when greedy.
        Pass it as `temperature=` to `longrl.ops.token_logprobs` to recompute them in the trainer."""
        return 1.0 if self.is_greedy else float(self.temperature)


@dataclass
class RolloutBatch:
    """B prompts to generate from, with their videos as embeddings (engines never run the vision tower).

    input_ids: [B, L] int64 prompt ids, padded on either side; attention_mask: [B, L] (1 = real token).
    video_embeds: one [n_i, H] tensor per video, videos in row order (as `ModelAdapter.build_inputs` takes
    them); video_grid_thw: [N, 3] int64; second_per_grid_ts: [N] float32 or None (1.0 each).
    inputs: the decoder inputs `adapter.build_inputs` made from the above, if the caller already has them
    (e.g. `VideoBatch.inputs`); engines that need them build them otherwise.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    video_embeds: Sequence[torch.Tensor] = ()
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None
    inputs: MultimodalInputs | None = None

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2 or self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [B, L], got {tuple(self.input_ids.shape)} and "
                f"{tuple(self.attention_mask.shape)}"
            )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def from_video_batch(cls, batch: VideoBatch, videos: Sequence[VideoEmbedding]) -> RolloutBatch:
        """From `longrl.models.build_video_batch(adapter, tok, videos, ...)` and the same `videos`."""
        return cls(
            input_ids=batch.input_ids,
            attention_mask=batch.inputs.attention_mask,
            video_embeds=[v.embeds for v in videos],
            video_grid_thw=batch.video_grid_thw,
            second_per_grid_ts=batch.second_per_grid_ts,
            inputs=batch.inputs,
        )

    def prompt_ids(self) -> list[list[int]]:
        """Each prompt's real token ids, padding removed."""
        mask = self.attention_mask.bool()
        return [row[m].tolist() for row, m in zip(self.input_ids, mask, strict=True)]


@dataclass
class RolloutResult:
    """One sampled response.

    prompt_index: row of the RolloutBatch it answers; sample_index: 0..n-1 within that prompt's group.
    token_ids: [T] int64 (CPU), T <= max_new_tokens, ending with the stop token when finish_reason is "stop".
    logprobs: [T] float32 (CPU), log_softmax(logits / params.logprob_temperature) of each token (see the
    module docstring). finish_reason: "stop" or "length". text: the decoded response without its stop token
    and special tokens (None when the engine has no tokenizer).
    """

    prompt_index: int
    sample_index: int
    token_ids: torch.Tensor
    logprobs: torch.Tensor
    finish_reason: str
    text: str | None = None

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])


def pad_responses(
    results: Sequence[RolloutResult], pad_token_id: int, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad responses into (token_ids [N, T] int64, logprobs [N, T] float32, mask [N, T] bool).

    T = `length` or the longest response. Past each response's end: pad_token_id, logprob 0, mask False.
    """
    longest = max((len(r) for r in results), default=0)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"length {length} is shorter than the longest response ({longest} tokens)")
    ids = torch.full((len(results), length), pad_token_id, dtype=torch.long)
    logprobs = torch.zeros((len(results), length), dtype=torch.float32)
    mask = torch.zeros((len(results), length), dtype=torch.bool)
    for i, r in enumerate(results):
        n = len(r)
        ids[i, :n] = r.token_ids
        logprobs[i, :n] = r.logprobs
        mask[i, :n] = True
    return ids, logprobs, mask


Weights = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


@runtime_checkable
class RolloutEngine(Protocol):
    """A generation engine. The trainer holds one of these and does not know which."""

    name: str

    def generate(self, batch: RolloutBatch, params: SamplingParams) -> list[RolloutResult]:
        """`params.n` responses per prompt: a flat list of len(batch) * n results, prompt-major
        (prompt 0's samples 0..n-1, then prompt 1's, ...)."""
        ...

    def update_weights(self, weights: Weights) -> None:
        """Load new policy weights, named as in the HF model's `state_dict()` (a mapping or an iterator of
        (name, tensor) pairs, e.g. `model.named_parameters()`); the next `generate` samples from them."""
        ...

    def sleep(self) -> None:
        """Release the engine's accelerator memory between rollouts (weights may be dropped)."""
        ...

    def wake(self) -> None:
        """Undo `sleep` before the next `generate` / `update_weights`."""
        ...
