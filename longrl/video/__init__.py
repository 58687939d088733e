"""Video input: decoding (decord, PyAV), frame sampling, clips, and Qwen2.5-VL's pixel layout.

    from longrl.video import SamplingConfig, load_video, preprocess_videos
    video = load_video("clip.mp4", SamplingConfig(num_frames=16))  # uint8 [16, H, W, 3] + timestamps
    inputs = preprocess_videos([video.frames], [video.sampled_fps])  # pixel_values_videos, video_grid_thw

Long videos: `load_video(..., transform=FrameResizer(config, device))` resizes frames while they are
decoded; then `preprocess_videos(..., resized=True)` (same result, bit for bit, without a full-size copy).

Modules: `decode` (probe + decode, crash/hang safe), `sampling` (which frames), `load` (both together),
`qwen_layout` (resize, normalize, patchify; reads a model folder's video settings), `probe` (the child-process script).
"""

from longrl.video.decode import (
    BACKENDS,
    DecodedFrames,
    FrameTransform,
    VideoInfo,
    check_backend,
    clear_probe_cache,
    decode_frames,
    probe_video,
)
from longrl.video.load import SampledVideo, load_clips, load_video
from longrl.video.qwen_layout import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    FrameResizer,
    QwenVideoConfig,
    QwenVideoInputs,
    patchify,
    pixel_bounds,
    preprocess_video,
    preprocess_videos,
    read_processor_settings,
    smart_resize,
)
from longrl.video.sampling import (
    FramePlan,
    SamplingConfig,
    TooFewFrames,
    plan_clips,
    plan_frames,
    segment_clips,
    uniform_indices,
)

__all__ = [
    "BACKENDS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "DecodedFrames",
    "FramePlan",
    "FrameResizer",
    "FrameTransform",
    "QwenVideoConfig",
    "QwenVideoInputs",
    "SampledVideo",
    "SamplingConfig",
    "TooFewFrames",
    "VideoInfo",
    "check_backend",
    "clear_probe_cache",
    "decode_frames",
    "load_clips",
    "load_video",
    "patchify",
    "pixel_bounds",
    "plan_clips",
    "plan_frames",
    "preprocess_video",
    "preprocess_videos",
    "probe_video",
    "read_processor_settings",
    "segment_clips",
    "smart_resize",
    "uniform_indices",
]
