"""`longrl video ...`: look at a video the way the model will see it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Video utilities.", no_args_is_help=True)


@app.command("inspect")
def inspect(
    path: Annotated[Path, typer.Argument(help="The video file.")],
    video_backend: Annotated[str, typer.Option(help="Decoder: auto (decord, then PyAV), decord or pyav.")] = "auto",
    frames: Annotated[int | None, typer.Option(help="Sample this many frames uniformly (instead of --fps).")] = None,
    fps: Annotated[float | None, typer.Option(help="Sample at this rate [default: 2.0 when --frames is not given].")] = None,
    max_frames: Annotated[int, typer.Option(help="Cap on frames when sampling by --fps.")] = 768,
    model: Annotated[Path | None, typer.Option(help="Model folder whose video preprocessing settings to use.")] = None,
    min_pixels: Annotated[int | None, typer.Option(help="Min pixels per resized frame (overrides the model's).")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Max pixels per resized frame (overrides the model's).")] = None,
    total_pixels: Annotated[int | None, typer.Option(help="Pixel budget across all frames of the video.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:  # fmt: skip
    """Probe a video (crash-safe) and print its frame plan, resized size, patch grid and visual-token count."""
    from longrl.errors import ConfigError
    from longrl.video import QwenVideoConfig, SamplingConfig
    from longrl.video.cost import inspect_video

    if frames is not None and fps is not None:
        raise ConfigError("give --frames or --fps, not both")
    sampling = SamplingConfig(num_frames=frames, max_frames=max_frames) if frames is not None else SamplingConfig(
        fps=2.0 if fps is None else fps, max_frames=max_frames
    )  # fmt: skip
    overrides = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels),
                                   ("total_pixels", total_pixels)) if v is not None}  # fmt: skip
    if model is not None:
        if not model.is_dir():
            raise ConfigError(f"--model {model}: not a folder")
        config = QwenVideoConfig.from_pretrained(model, **overrides)
    else:
        config = QwenVideoConfig(**overrides)
    cost = inspect_video(path, sampling, config, video_backend)
    info = cost.info
    print(f"{info.path}: {info.width}x{info.height}, {info.fps:g} fps, {info.num_frames} frames, "
          f"{info.duration_s:.2f} s (decoder: {info.backend})")  # fmt: skip
    print(
        f"sampled: {cost.frames} frames at {cost.sampled_fps:.3f} fps, {cost.first_s:.2f} s .. {cost.last_s:.2f} s"
    )
    print(f"resized: {cost.resized[1]}x{cost.resized[0]} per frame; patch grid (t, h, w) = {cost.grid_thw}")
    print(f"visual tokens: {cost.visual_tokens}")
    if json_path is not None:
        json_path.write_text(json.dumps(cost.to_dict(), indent=2) + "\n")
