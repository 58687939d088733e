"""The training rows in the order a run sees them: seeded per-epoch shuffles, split over the dp ranks.

    data, report = load_train_data(cfg.data, seed=cfg.run.seed, dp_rank=state.dp_rank, dp_size=state.dp_size)
    batch = data.next_batch(cfg.batch_size)     # this dp rank's next examples
    state_dict = data.position()                # JSON-able; data.restore(state_dict) continues exactly

Order: epoch e visits every example once, in the permutation numpy.random.default_rng([seed, e]) draws (file
order with shuffle=False). dp rank r takes every dp_size-th entry of that permutation starting at r (a
strided shard), so within an epoch the ranks' examples are disjoint and together cover the whole file. Each
rank walks its own shard with its own cursor and moves on to the next epoch when it runs out, so a rank can
ask for a few more examples (to replace rows whose video turned out unreadable) without the others.
Examples marked bad with `exclude` are never returned again. The sp ranks of one dp replica share dp_rank,
so they see the same examples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from longrl.errors import ConfigError, DataError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from longrl.data.dataset import LoadReport
    from longrl.data.schema import Example
    from longrl.models.embedding_store import VideoEmbedding
    from longrl.parallel.groups import ParallelState
    from longrl.train.config import DataConfig


def _ids_digest(examples: Sequence[Example]) -> str:
    # Identifies the data a position refers to: a resumed run on a changed file would silently see other rows.
    h = hashlib.sha256()
    for ex in examples:
        h.update(str(ex.id).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class TrainData:
    """This dp rank's endless, seeded stream over `examples` (see the module docstring for the order)."""

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        seed: int,
        shuffle: bool = True,
        dp_rank: int = 0,
        dp_size: int = 1,
    ) -> None:
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"bad dp rank {dp_rank} of {dp_size}")
        if len(examples) < dp_size:
            raise ConfigError(
                f"the training data has {len(examples)} usable rows, fewer than the {dp_size} data-parallel "
                "ranks; add rows or use fewer processes"
            )
        self.examples = list(examples)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.digest = _ids_digest(self.examples)
        self.epoch = 0
        self.cursor = 0  # next entry of this rank's shard of the current epoch
        self.excluded: set[int] = set()
        self._shard = self._epoch_shard(0)

    def __len__(self) -> int:
        return len(self.examples)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Indices of all examples in the order epoch `epoch` visits them (every rank computes the same)."""
        n = len(self.examples)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def _epoch_shard(self, epoch: int) -> np.ndarray:
        return self.epoch_order(epoch)[self.dp_rank :: self.dp_size]

    def next_index(self) -> int:
        """The index (into `examples`) of this rank's next example; skips excluded ones."""
        # Each shard has at least one entry (len >= dp_size); a rank whose whole shard is excluded walks it
        # once per epoch finding nothing, so bound the walk and say why.
        for _ in range(2 * len(self.examples) + 2):
            if self.cursor >= len(self._shard):
                self.epoch += 1
                self.cursor = 0
                self._shard = self._epoch_shard(self.epoch)
            index = int(self._shard[self.cursor])
            self.cursor += 1
            if index not in self.excluded:
                return index
        raise DataError(
            f"no usable training example left on data-parallel rank {self.dp_rank}: all "
            f"{len(self.examples)} rows were excluded (unreadable videos?)"
        )

    def next_batch(self, n: int) -> list[Example]:
        """This rank's next `n` examples (crossing into the next epoch when the current one runs out)."""
        return [self.examples[self.next_index()] for _ in range(n)]

    def exclude(self, example: Example) -> None:
        """Never return `example` again (e.g. its video cannot be decoded). Identity: its position in the list."""
        for i, ex in enumerate(self.examples):
            if ex is example:
                self.excluded.add(i)
                return
        raise ValueError(f"example {example.id!r} is not part of this data")

    def position(self) -> dict[str, Any]:
        """JSON-able state for an exact resume on this rank."""
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "excluded": sorted(self.excluded),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "dp_rank": self.dp_rank,
            "dp_size": self.dp_size,
            "num_examples": len(self.examples),
            "digest": self.digest,
        }

    def restore(self, position: dict[str, Any]) -> None:
        """Continue from `position()` of the same data, seed and dp layout (ConfigError when they differ)."""
        try:
            epoch, cursor = int(position["epoch"]), int(position["cursor"])
            excluded = {int(i) for i in position.get("excluded", [])}
            saved = (position["num_examples"], position["digest"], position["seed"], position["shuffle"])
            layout = (position["dp_rank"], position["dp_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"the checkpoint's data position is incomplete ({err}); cannot resume"
            ) from None
        if saved != (len(self.examples), self.digest, self.seed, self.shuffle):
            raise ConfigError(
                "the training data, seed or shuffle setting differ from the checkpoint's; resume with the "
                "same --data, --seed and data.shuffle, or start a new run folder"
            )
        if layout != (self.dp_rank, self.dp_size):
            raise ConfigError(
                f"the checkpoint was written with {layout[1]} data-parallel ranks, this run has "
                f"{self.dp_size}; resume with the same --nproc and --sp"
            )
        self.epoch, self.cursor = epoch, cursor
        self.excluded = {i for i in excluded if 0 <= i < len(self.examples)}
        self._shard = self._epoch_shard(epoch)


def next_encoded(
    data: TrainData,
    n: int,
    encode: Callable[[list[Path]], Any],
    on_failed: Callable[[Example, str], None],
) -> tuple[list[Example], list[VideoEmbedding]]:
    """The next `n` examples of `data` whose videos encode, with their embeddings.

    encode(paths) returns `longrl.rollout.prompts.EncodedVideos` (a collective over sp: the sp ranks of a
    replica draw the same rows). on_failed(example, reason) is called for a row whose video fails (exclude it,
    or raise); the next rows fill its place.
    """
    chosen: list[Example] = []
    videos: list[VideoEmbedding] = []
    while len(chosen) < n:
        candidates = data.next_batch(n - len(chosen))
        encoded = encode([ex.video for ex in candidates])
        for ex in candidates:
            reason = encoded.failed.get(ex.video)
            if reason is None:
                chosen.append(ex)
                videos.append(encoded.embeddings[ex.video])
            else:
                on_failed(ex, reason)
    return chosen, videos


MISSING_REASONING = "missing_reasoning"  # the bad-row reason SFT adds: no text for the <think> part


def load_train_data(
    cfg: DataConfig, *, seed: int, dp_rank: int = 0, dp_size: int = 1, require_reasoning: bool = False
) -> tuple[TrainData, LoadReport]:
    """Read and validate `cfg.train` (skip or fail on bad rows per `cfg.on_bad_row`) into this rank's stream.

    require_reasoning (SFT): a row with an empty `reasoning` is a bad row too, counted in the report under
    MISSING_REASONING (or, with on_bad_row "fail", a DataError naming the row).
    """
    from longrl.data.dataset import load_examples

    if not cfg.train:
        raise ConfigError("no training data: pass --data FILE (a JSON or JSONL file of rows)")
    examples, report = load_examples(cfg.train, cfg.video_root, on_bad_row=cfg.on_bad_row)
    if require_reasoning:
        kept = []
        for ex in examples:
            if ex.reasoning.strip():
                kept.append(ex)
                continue
            if cfg.on_bad_row == "fail":
                raise DataError(
                    f"{cfg.train}: row id {ex.id!r}: {MISSING_REASONING}: SFT needs a non-empty `reasoning` "
                    "(the <think> part of the target)"
                )
            report.skipped[MISSING_REASONING] += 1
            report.kept -= 1
        if not kept:
            raise DataError(f"{cfg.train}: no usable rows for SFT; {report.summary()}")
        examples = kept
    data = TrainData(examples, seed=seed, shuffle=cfg.shuffle, dp_rank=dp_rank, dp_size=dp_size)
    return data, report


def gather_positions(data: TrainData, state: ParallelState) -> list[dict[str, Any]]:
    """Every dp rank's `position()` in dp-rank order (a collective over the world; rank 0 saves the list)."""
    import torch.distributed as dist

    mine = data.position()
    if not state.distributed:
        return [mine]
    everyone: list[Any] = [None] * state.world_size
    dist.all_gather_object(everyone, mine)
    # sp ranks of a replica hold identical positions; keep one per dp rank.
    return [everyone[d * state.sp_size] for d in range(state.dp_size)]


def restore_positions(data: TrainData, positions: Sequence[dict[str, Any]]) -> None:
    """Restore this rank's entry of a `gather_positions` list."""
    if not isinstance(positions, (list, tuple)) or len(positions) != data.dp_size:
        saved = len(positions) if isinstance(positions, (list, tuple)) else "?"
        raise ConfigError(
            f"the checkpoint was written with {saved} data-parallel ranks, this run has {data.dp_size}; "
            "resume with the same --nproc and --sp"
        )
    data.restore(positions[data.dp_rank])
