"""Write frames to an H.264 .mp4 (validation samples, sample datasets, test fixtures).

Frames go to ffmpeg (libx264, yuv420p) through imageio-ffmpeg. yuv420p halves the chroma
resolution, so width and height must be even: we refuse odd sizes instead of silently padding or
resizing, because a changed size would surprise whoever compares the video with its source.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch


def frames_to_uint8(frames, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Convert float frames [F, C, H, W] or [F, H, W, C] (C=3) in `value_range` to uint8 [F, H, W, 3].

    When both dim 1 and dim 3 are 3 the layout is ambiguous; channels-first wins, because that is
    what `decode_video` and the training code produce. uint8 input is only re-laid out.
    """
    tensor = torch.as_tensor(frames).detach().cpu()
    if tensor.ndim != 4 or 3 not in (tensor.shape[1], tensor.shape[3]):
        raise ValueError(
            f"frames_to_uint8 expects [F, 3, H, W] or [F, H, W, 3] frames, got shape {tuple(tensor.shape)}; "
            "add a frame dimension with frames.unsqueeze(0) for a single image"
        )
    if tensor.shape[1] == 3:
        tensor = tensor.permute(0, 2, 3, 1)
    if tensor.dtype == torch.uint8:
        return tensor.contiguous().numpy()
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    scaled = (tensor.float() - low) / (high - low) * 255.0
    return scaled.round().clamp(0, 255).to(torch.uint8).contiguous().numpy()


def write_mp4(frames, path, fps: float = 8) -> Path:
    """Write uint8 frames [F, H, W, 3] (numpy or torch, RGB) to `path` as H.264 and return the path.

    The file appears atomically: ffmpeg writes a hidden temp file in the same folder, which is
    renamed over `path` only once complete, so readers never see a half-written video.
    """
    path = Path(path)
    array = np.ascontiguousarray(torch.as_tensor(frames).cpu().numpy())
    _check_frames(array, path, fps)
    num_frames, height, width, _ = array.shape

    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename. The ".mp4" suffix makes ffmpeg pick mp4.
    temp_name = str(path.parent / f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.mp4")
    try:
        writer = imageio_ffmpeg.write_frames(
            temp_name,
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=8,
            # imageio would otherwise resize to multiples of 16; sizes here are even by contract.
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        writer.send(None)
        try:
            for index in range(num_frames):
                writer.send(array[index])
        finally:
            writer.close()
        # imageio does not report ffmpeg's exit status; an empty file is the sign it failed.
        if os.path.getsize(temp_name) == 0:
            raise OSError(f"ffmpeg wrote nothing for {path}; its error message is printed above")
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _check_frames(array: np.ndarray, path: Path, fps: float) -> None:
    if array.dtype != np.uint8:
        raise ValueError(
            f"write_mp4({path}): frames must be uint8, got {array.dtype}; "
            "convert float frames with frames_to_uint8(frames, value_range=...)"
        )
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise ValueError(
            f"write_mp4({path}): frames must be shaped [F, H, W, 3] with F >= 1, got {array.shape}; "
            "frames_to_uint8 converts [F, 3, H, W] tensors"
        )
    height, width = array.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(
            f"write_mp4({path}): H.264 yuv420p needs even width and height, got {width}x{height}; "
            "crop or pad the frames to even sizes first"
        )
    if not fps > 0:
        raise ValueError(f"write_mp4({path}): fps must be > 0, got {fps}")
