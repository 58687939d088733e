"""`longrl eval`: answer a benchmark with a model at one or more frame settings, score, and report.

    metrics = run_eval(EvalConfig(model="ckpt/", benchmark="video-mme", data="test.parquet",
                                  video_root="videos/", out="eval/", frames=(32, 64, 128)))

The output folder:

    eval_config.json           what was run (a rerun with a different config is refused)
    frames_64/predictions.jsonl one record per question (see `prediction_record`), appended batch by batch
    metrics.json               per setting (`by_setting`): n, errors, accuracy, ci95, format_rate, pass_at_k,
                               per_category, per_duration; the same keys at the top level for the last
                               setting (`primary`); the data file's bad-row counts (`load`, `bad_rows`)
    report.md                  the same as a markdown table; accuracy_vs_frames.png with --plot

A rerun into the same folder skips the questions already in each predictions file (resume), so a killed run
loses at most one batch. Under torchrun (`--nproc N --sp S`) the dp groups split the questions and global
rank 0 gathers the records and writes every file. The S ranks of an sp group answer the same questions
together, each holding 1/S of every prompt: the vision encode is sharded over the group (frames), and with
S > 1 so is generation (`longrl.rollout.sp_engine.SPHFEngine`): the prompt prefill runs sequence-parallel
(ring or Ulysses attention, `--sp-attn`), each rank keeps only its shard's KV cache, and every decode step
merges the ranks' partial attention (flash-decoding across ranks). That is what lets a prompt too long for
one device's KV cache be answered at all.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longrl.atomic import write_text_atomic
from longrl.errors import ConfigError, DataError, VideoError
from longrl.eval.items import EvalItem, duration_bucket
from longrl.eval.judge import JudgeConfig, LLMJudge, make_judge
from longrl.eval.loaders import BENCHMARKS, load_benchmark
from longrl.eval.predictions import PredictionWriter, load_predictions
from longrl.eval.scoring import score_response, summarize
from longrl.eval.subtitles import SUBTITLE_RULES, frame_times, read_srt, select_cues, with_subtitles
from longrl.parallel.sp_attention import SP_ATTN_CHOICES
from longrl.rl.rewards import OPEN_ENDED, RewardConfig

CONFIG_FILE = "eval_config.json"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
REPORT = "report.md"
PLOT = "accuracy_vs_frames.png"
# eval_config.json keys that must match for a rerun to add to the same folder (the frame settings are
# separate folders, --limit only selects items, and the rest changes how, not what, is computed).
RESUME_KEYS = (
    "model", "benchmark", "data", "video_root", "samples", "temperature", "top_p", "max_new_tokens",
    "subtitles", "subtitle_root", "subtitle_rule", "seed", "dtype", "require_answer_tag", "judge",
)  # fmt: skip

ProgressFn = Callable[[str, int, int], None]  # (setting label, items done, items in all)


def frames_label(num_frames: int) -> str:
    """The output subfolder (and report column) of one frame count: frames_N."""
    return f"frames_{num_frames}"


@dataclass
class EvalConfig:
    """Everything `longrl eval` takes (the CLI flags of the same names).

    frames: frame counts to sweep (one folder each); None with `fps`: one setting sampling at fps, capped
    at max_frames. temperature: None = greedy for samples == 1, 1.0 otherwise. sp: sequence-parallel size
    (the process count comes from torchrun; > 1 shards the vision encode, prefill and KV cache of each
    prompt, and needs engine "hf"). sp_attn: the sp prefill's attention, "ring", "ulysses" or "auto".
    dtype: "auto" = bfloat16 on GPU, float32 on CPU. judge: an LLM judge for open-ended answers
    (`longrl.eval.judge.JudgeConfig`), None = normalized exact match.
    """

    model: Path
    benchmark: str
    data: Path
    out: Path
    video_root: Path | None = None
    frames: Sequence[int] | None = (64,)
    fps: float | None = None
    max_frames: int = 768
    samples: int = 1
    temperature: float | None = None
    top_p: float = 1.0
    max_new_tokens: int = 1024
    batch_size: int = 8
    subtitles: bool = False
    subtitle_root: Path | None = None
    subtitle_rule: str = "frames"
    limit: int | None = None
    engine: str = "hf"
    sp: int = 1
    sp_attn: str = "auto"
    embed_cache_dir: Path | None = None
    video_backend: str = "auto"
    on_bad_row: str = "skip"
    plot: bool = False
    seed: int = 0
    dtype: str = "auto"
    require_answer_tag: bool = True
    judge: JudgeConfig | None = None

    def __post_init__(self) -> None:
        for name in ("model", "data", "out", "video_root", "subtitle_root", "embed_cache_dir"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value).expanduser())
        if self.frames is not None:
            self.frames = tuple(int(n) for n in self.frames)

    def check(self) -> None:
        """ConfigError for any value no run could use (before anything is loaded)."""
        if self.benchmark not in BENCHMARKS:
            raise ConfigError(f"--benchmark {self.benchmark}: choose one of {', '.join(BENCHMARKS)}")
        if self.fps is not None and self.frames:
            raise ConfigError("give --frames or --fps, not both")
        if self.fps is None and not self.frames:
            raise ConfigError("--frames needs at least one frame count, e.g. --frames 64 or 32,64,128")
        if self.frames and (len(set(self.frames)) != len(self.frames) or min(self.frames) < 1):
            raise ConfigError(f"--frames {','.join(map(str, self.frames))}: give distinct positive counts")
        for name in ("samples", "max_new_tokens", "batch_size", "sp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.sp > 1 and self.engine != "hf":
            raise ConfigError(
                f"--sp {self.sp} generates sequence-parallel with the hf engine; --engine {self.engine} cannot "
                "(use --engine hf, or --sp 1 and the engine's own parallelism)"
            )
        if self.sp_attn not in SP_ATTN_CHOICES:
            raise ConfigError(f"--sp-attn {self.sp_attn}: choose one of {', '.join(SP_ATTN_CHOICES)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.subtitle_rule not in SUBTITLE_RULES:
            raise ConfigError(f"--subtitle-rule must be one of {', '.join(SUBTITLE_RULES)}")
        if self.subtitle_root is not None and not self.subtitles:
            raise ConfigError("--subtitle-root is only used with --subtitles")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out} is a file; choose a folder")
        self.sampling_params(seed=0)  # temperature / top_p checks
        self.settings()  # fps / max_frames checks

    def settings(self) -> list[tuple[str, Any]]:
        """[(label, SamplingConfig)] in the order given: frames_N per frame count, or one fps_F."""
        from longrl.video.sampling import SamplingConfig

        if self.fps is not None:
            return [(f"fps_{self.fps:g}", SamplingConfig(fps=self.fps, max_frames=self.max_frames))]
        return [(frames_label(n), SamplingConfig(num_frames=n)) for n in self.frames]

    @property
    def effective_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.samples == 1 else 1.0

    def sampling_params(self, seed: int):
        from longrl.rollout import SamplingParams

        return SamplingParams(
            n=self.samples,
            temperature=self.effective_temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=seed,
        )

    def identity(self) -> dict[str, Any]:
        """The eval_config.json content: the RESUME_KEYS (paths resolved) plus the informative rest."""

        def path(p: Path | None) -> str | None:
            return None if p is None else str(Path(p).expanduser().resolve())

        return {
            "model": path(self.model), "benchmark": self.benchmark, "data": path(self.data),
            "video_root": path(self.video_root if self.video_root is not None else Path(self.data).parent),
            "samples": self.samples, "temperature": self.effective_temperature, "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens, "subtitles": self.subtitles,
            "subtitle_root": path(self.subtitle_root), "subtitle_rule": self.subtitle_rule if self.subtitles else None,
            "seed": self.seed, "dtype": self.dtype, "require_answer_tag": self.require_answer_tag,
            "judge": self.judge.name if self.judge else None, "engine": self.engine, "video_backend": self.video_backend,
        }  # fmt: skip


def batch_seed(seed: int, ids: Sequence[str]) -> int:
    """The sampling seed of one batch: a function of the run seed and its item ids only, so a resumed run
    samples a question the same way however the batches fall."""
    return zlib.crc32("\x1f".join([str(seed), *ids]).encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class Prepared:
    """An item ready to ask: its example (subtitles inserted), duration bucket and seconds, subtitle lines."""

    item: EvalItem
    example: Any
    duration: str
    duration_s: float | None
    subtitle_lines: int | None


@functools.lru_cache(maxsize=64)
def _cues(path: Path):
    return read_srt(path)


def prepare(item: EvalItem, sampling, backend: str, subtitle_rule: str = "frames") -> Prepared:
    """Probe the item's video (the decoder's cached probe, reused when it is decoded) for its duration and,
    with subtitles, for the timestamps of the frames `sampling` will take; a video that fails to probe is
    reported later by the encode, as an error record."""
    from longrl.video.decode import probe_video

    try:
        info = probe_video(item.example.video, backend)
    except VideoError:
        info = None
    duration_s = info.duration_s if info is not None else None
    example, lines = item.example, None
    if item.subtitles is not None and info is not None:
        try:
            chosen = select_cues(_cues(item.subtitles), frame_times(info, sampling), subtitle_rule)
        except DataError:
            chosen = []
        example, lines = with_subtitles(example, chosen), len(chosen)
    bucket = item.duration or duration_bucket(duration_s)
    return Prepared(item, example, bucket, duration_s, lines)


def prediction_record(prepared: Prepared, answered, label: str, reward: RewardConfig) -> dict[str, Any]:
    """The predictions.jsonl record of one question: id, category, duration (bucket) and duration_s,
    answer_kind, gold, video, frames (the setting), subtitle_lines, then per sample: responses, parsed
    answers, correct, format_ok, finish_reasons; accuracy = fraction of samples correct; error = why the
    question has no responses (its video failed), else None."""
    item, ex = prepared.item, prepared.item.example
    record: dict[str, Any] = {
        "id": item.id, "category": item.category, "duration": prepared.duration,
        "duration_s": prepared.duration_s, "answer_kind": item.answer_kind, "gold": ex.answer,
        "video": ex.video_rel, "frames": label, "subtitle_lines": prepared.subtitle_lines,
    }  # fmt: skip
    scores = [score_response(t, ex.answer, ex.options, item.answer_kind, reward) for t in answered.texts]
    record.update(
        responses=answered.texts,
        parsed=[s.parsed for s in scores],
        correct=[s.correct for s in scores],
        format_ok=[s.format_ok for s in scores],
        finish_reasons=[r.finish_reason for r in answered.results],
        accuracy=sum(s.correct for s in scores) / len(scores) if scores else None,
        error=answered.error if not scores else None,
    )
    if not scores and record["error"] is None:
        record["error"] = "no response"
    return record


def apply_judge(judge: LLMJudge | None, records: Sequence[dict[str, Any]], questions: dict[str, str]) -> None:
    """Re-score the open-ended records with an LLM judge, in place: `exact` keeps the exact-match verdicts,
    `judge` holds the judge's replies, `correct` / `accuracy` become the judge's verdicts."""
    if judge is None:
        return
    todo = [r for r in records if r["answer_kind"] == OPEN_ENDED and not r["error"]]
    triples = [(questions[r["id"]], r["gold"], parsed) for r in todo for parsed in r["parsed"]]
    verdicts = iter(judge.judge_many(triples))
    for r in todo:
        mine = [next(verdicts) for _ in r["parsed"]]
        r["exact"] = r["correct"]
        r["judge"] = [v.reply for v in mine]
        r["correct"] = [v.correct for v in mine]
        r["accuracy"] = sum(r["correct"]) / len(r["correct"])


# ------------------------------------------------------------------------------------------------ the run


class _World:
    """The collectives the runner needs, no-ops in a single process."""

    def __init__(self, state) -> None:
        self.state = state

    @property
    def is_writer(self) -> bool:
        return self.state.rank == 0

    def from_writer(self, fn: Callable[[], Any]) -> Any:
        """fn() run on rank 0 and its value sent to every rank; what it raises is raised on every rank (so
        a user mistake found by rank 0 stops the whole world at once instead of leaving it waiting)."""
        value, error = None, None
        if self.is_writer:
            try:
                value = fn()
            except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
                if not self.state.distributed:
                    raise
                error = err
        if self.state.distributed:
            import torch.distributed as dist

            box = [(value, error)]
            dist.broadcast_object_list(box, src=0)
            value, error = box[0]
        if error is not None:
            raise error
        return value

    def gather(self, records: list[dict]) -> list[dict]:
        """Every rank's records concatenated in rank order, on rank 0 ([] elsewhere)."""
        if not self.state.distributed:
            return records
        import torch.distributed as dist

        out = [None] * self.state.world_size if self.is_writer else None
        dist.gather_object(records, out, dst=0)
        return [r for part in out for r in part] if self.is_writer else []


def _prepare_out(config: EvalConfig) -> None:
    """Create the output folder and check (or write) eval_config.json; ConfigError for a different config."""
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create the folder ({err.strerror or err})") from None
    identity = config.identity()
    path = out / CONFIG_FILE
    if path.exists():
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path} is unreadable ({err}); choose a new --out") from None
        differ = [k for k in RESUME_KEYS if earlier.get(k) != identity.get(k)]
        if differ:
            raise ConfigError(
                f"--out {out} holds an eval with a different {', '.join(differ)}; choose a new --out "
                "(a rerun with the same settings resumes)"
            )
        return
    # Not ours (no eval_config.json): never overwrite what someone else put there.
    ours = [f"{label}/{PREDICTIONS}" for label, _ in config.settings()] + [METRICS, REPORT, PLOT]
    stale = [name for name in ours if (out / name).exists()]
    if stale:
        raise ConfigError(f"--out {out} already has {stale[0]} but no {CONFIG_FILE}; choose a new --out")
    write_text_atomic(path, json.dumps(identity, indent=2) + "\n")


def _done_records(out: Path, label: str) -> dict[str, dict]:
    folder = out / label
    folder.mkdir(parents=True, exist_ok=True)
    return load_predictions(folder / PREDICTIONS)


def _dtype(config: EvalConfig, device) -> str:
    if config.dtype != "auto":
        return config.dtype
    return "bfloat16" if device.type == "cuda" else "float32"


def run_eval(config: EvalConfig, on_progress: ProgressFn | None = None) -> dict[str, Any] | None:
    """Run the eval (resuming from `config.out`) and return its metrics (see module docstring) on global
    rank 0, None on the other ranks. Joins the torchrun world when there is one (`init_parallel(sp)`).

    Raises ConfigError / DataError / ModelError for the user's mistakes, before any answering starts.
    """
    import torch.distributed as dist

    from longrl.parallel.groups import destroy_parallel, init_parallel

    config.check()
    joined_here = not dist.is_initialized()
    state = init_parallel(config.sp)
    try:
        return _run(config, state, on_progress)
    finally:
        if joined_here and state.distributed:
            destroy_parallel()


@dataclass
class _Session:
    """What every frame setting of one run shares."""

    config: EvalConfig
    world: _World
    items: list[EvalItem]
    adapter: Any
    tokenizer: Any
    engine: Any
    store: Any
    video_config: Any
    judge: LLMJudge | None
    on_progress: ProgressFn | None


def _run(config: EvalConfig, state, on_progress: ProgressFn | None) -> dict[str, Any] | None:
    from longrl.models import EmbeddingStore, load_model
    from longrl.rollout import engine_class
    from longrl.video.decode import check_backend

    world = _World(state)
    check_backend(config.video_backend)
    items, report, missing_subs = load_benchmark(
        config.benchmark, config.data, config.video_root, subtitles=config.subtitles,
        subtitle_root=config.subtitle_root, on_bad_row=config.on_bad_row,
    )  # fmt: skip
    if config.limit is not None:
        items = items[: config.limit]
    engine_cls = engine_class(config.engine)
    judges: list[LLMJudge] = []  # built on rank 0 only (it writes the records); its errors reach every rank
    world.from_writer(lambda: judges.append(make_judge(config.judge)) if config.judge else None)
    engine = None
    try:
        world.from_writer(lambda: _prepare_out(config))
        adapter, tokenizer, video_config = load_model(
            config.model, _dtype(config, state.device), state.device
        )
        engine = _make_engine(config, state, engine_cls, adapter, tokenizer)
        session = _Session(
            config, world, items, adapter, tokenizer, engine,
            EmbeddingStore.for_adapter(adapter, disk_dir=config.embed_cache_dir), video_config,
            judges[0] if judges else None, on_progress,
        )  # fmt: skip
        by_setting = {
            label: _answer_setting(session, label, sampling) for label, sampling in config.settings()
        }
    finally:
        for judge in judges:
            judge.close()
        if engine is not None and hasattr(engine, "close"):
            engine.close()
    if not world.is_writer:
        return None
    return _finish(config, by_setting, report, missing_subs, len(items))


def _make_engine(config: EvalConfig, state, engine_cls: type, adapter, tokenizer):
    """The rollout engine: sequence-parallel over the sp group when sp > 1 (prefill, KV cache and decode
    sharded), else `config.engine`'s class."""
    if state.sp_size > 1:
        from longrl.rollout.sp_engine import SPHFEngine

        return SPHFEngine(adapter, tokenizer, state=state, attn=config.sp_attn)
    # vLLM loads the folder itself; given none it would save a copy of the loaded model first.
    extra = {"model_dir": config.model} if config.engine == "vllm" else {}
    return engine_cls(adapter, tokenizer, **extra)


def _answer_setting(session: _Session, label: str, sampling) -> dict[str, Any] | None:
    """Answer the items not yet in `<out>/<label>/predictions.jsonl` (appending batch by batch) and return
    the setting's metrics (rank 0; None elsewhere)."""
    from longrl.rollout.answering import answer_examples
    from longrl.rollout.prompts import VideoSource

    config, world, items = session.config, session.world, session.items
    state = world.state
    out = Path(config.out)
    done: dict[str, dict] = {}  # id -> record, on rank 0 (only the ids travel)

    def load_done() -> set[str]:
        done.update(_done_records(out, label))
        return set(done)

    done_ids = world.from_writer(load_done)
    pending = [it for it in items if it.id not in done_ids]
    source = VideoSource(
        sampling, session.video_config, backend=config.video_backend, store=session.store, state=state
    )
    reward = RewardConfig(require_answer_tag=config.require_answer_tag)
    questions = {it.id: it.example.question for it in items}  # without subtitles, for the judge
    finished = len(items) - len(pending)
    progress = session.on_progress if world.is_writer else None
    if progress:
        progress(label, finished, len(items))
    step = config.batch_size * state.dp_size  # one batch per dp group per round
    writer = PredictionWriter(out / label / PREDICTIONS) if world.is_writer else None
    try:
        for start in range(0, len(pending), step):
            mine = pending[start : start + step][state.dp_rank * config.batch_size :][: config.batch_size]
            prepared = [prepare(it, sampling, config.video_backend, config.subtitle_rule) for it in mine]
            params = config.sampling_params(batch_seed(config.seed, [it.id for it in mine]))
            answered = answer_examples(
                session.adapter, session.tokenizer, session.engine, [p.example for p in prepared], source,
                params, batch_size=config.batch_size,
            )  # fmt: skip
            records = [
                prediction_record(p, a, label, reward) for p, a in zip(prepared, answered, strict=True)
            ]
            gathered = world.gather(records if state.sp_rank == 0 else [])
            if writer is not None:
                apply_judge(session.judge, gathered, questions)
                writer.write(gathered)
                done.update((r["id"], r) for r in gathered)
                finished += len(pending[start : start + step])
                if progress:
                    progress(label, finished, len(items))
    finally:
        if writer is not None:
            writer.close()
    if not world.is_writer:
        return None
    return summarize([done[it.id] for it in items if it.id in done], config.samples)


def _finish(
    config: EvalConfig, by_setting: dict, report, missing_subs: int, num_items: int
) -> dict[str, Any]:
    """metrics.json, report.md and (with --plot) the PNG; returns the metrics."""
    from longrl.eval.report import plot_accuracy, write_markdown

    settings = list(by_setting)
    primary = settings[-1]
    identity = config.identity()
    metrics = {
        "benchmark": config.benchmark, "model": identity["model"], "data": identity["data"],
        "samples": config.samples, "temperature": config.effective_temperature, "subtitles": config.subtitles,
        "settings": settings, "primary": primary, **by_setting[primary],
        "items": num_items, "bad_rows": report.num_skipped, "missing_subtitles": missing_subs,
        "load": report.to_dict(), "by_setting": by_setting,
    }  # fmt: skip
    out = Path(config.out)
    write_text_atomic(out / METRICS, json.dumps(metrics, indent=2) + "\n")
    write_markdown(metrics, out / REPORT)
    if config.plot:
        plot_accuracy(metrics, out / PLOT)
    return metrics
