"""Decode a training clip from a video file: [F, 3, H, W] float32 RGB in [-1, 1].

ffmpeg does all the pixel work in one streaming pass: `select` keeps only the source frames the
clip needs, `scale` resizes them so they cover H x W with the display aspect ratio kept (it sees
the sample aspect ratio and any rotation ffmpeg already applied), and `crop` cuts H x W out. Only
the selected frames are resized and piped to Python, and ffmpeg stops after the last one, so
taking 49 frames from the start of a long 1080p file costs about as much as taking them from a
short one. Requires ffmpeg >= 5.1 (for -fps_mode); imageio-ffmpeg bundles a newer one.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from blueberry_video.errors import BlueberryError, stop_within

logger = logging.getLogger(__name__)


def _imageio_ffmpeg():
    # Imported on first use: training from a latent cache, the benchmarks and the memory estimate decode no
    # video, and run where imageio-ffmpeg (a 68 MB wheel with its ffmpeg binary) is not installed.
    import imageio_ffmpeg

    return imageio_ffmpeg


CROP_MODES = ("center", "random")
SHORT_VIDEO_POLICIES = ("skip", "loop", "pad")
PROBE_TIMEOUT_S = 60


class VideoDecodeError(BlueberryError):
    """A video cannot be decoded; `path` is the file and `reason` says why and what to do."""

    # `reason` has a default so that `type(error)(message)` works: torch's DataLoader rebuilds
    # worker exceptions that way, and would otherwise turn ours into a plain RuntimeError.
    def __init__(self, path, reason: str = ""):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if reason else str(path))

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class VideoAccessError(BlueberryError):
    """The machine, not the file, is at fault (permissions, slow storage, ffmpeg that will not run): it stops the
    build instead of being counted as a skipped video, a skip the cache would keep after the fault is gone."""


class VideoNotReadableError(VideoAccessError, PermissionError):
    """This process may not read the video."""


class VideoReadTimeoutError(VideoAccessError, TimeoutError):
    """ffmpeg did not read the video's header in time: storage that is slow or gone (a network mount)."""


class FfmpegNotRunnableError(VideoAccessError):
    """imageio-ffmpeg's ffmpeg binary cannot be started."""


def _ffmpeg_exe() -> str:
    try:
        return _imageio_ffmpeg().get_ffmpeg_exe()
    except RuntimeError as error:  # imageio-ffmpeg's binary is gone and none is on PATH
        raise _ffmpeg_not_runnable(error) from error


def _ffmpeg_not_runnable(error: Exception) -> FfmpegNotRunnableError:
    return FfmpegNotRunnableError(f"cannot run ffmpeg ({error}); reinstall imageio-ffmpeg (pip install "
                                  "--force-reinstall imageio-ffmpeg), on a filesystem that allows running programs")


class VideoTooShortError(VideoDecodeError):
    """The video has fewer usable frames than the sampling asks for (and short_video='skip')."""


@dataclass(frozen=True)
class FrameSampling:
    """Which frames to take from a video and the size to bring them to."""

    num_frames: int
    height: int
    width: int
    fps: float | None = None
    skip_frames_start: int = 0
    skip_frames_end: int = 0
    crop: str = "center"
    short_video: str = "skip"
    # Every n-th frame, n as large as fits num_frames in the usable span, whatever the video's length (a clip's speed
    # then differs from video to video), as diffusers' CogVideoX script takes them.
    spread: bool = False

    def __post_init__(self):
        for name in ("num_frames", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FrameSampling.{name} must be a positive integer, got {value!r}")
        for name in ("skip_frames_start", "skip_frames_end"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"FrameSampling.{name} must be an integer >= 0, got {value!r}")
        if self.fps is not None and not (
            isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0
        ):
            raise ValueError(f"FrameSampling.fps must be None (consecutive frames) or a number > 0, got {self.fps!r}")
        if not isinstance(self.spread, bool):
            raise ValueError(f"FrameSampling.spread must be True or False, got {self.spread!r}")
        if self.spread and self.fps is not None:
            raise ValueError(f"FrameSampling.spread takes frames by count, fps by time: set one, not both "
                             f"(fps={self.fps!r})")
        if self.crop not in CROP_MODES:
            raise ValueError(f"FrameSampling.crop must be one of {', '.join(CROP_MODES)}, got {self.crop!r}")
        if self.short_video not in SHORT_VIDEO_POLICIES:
            raise ValueError(
                f"FrameSampling.short_video must be one of {', '.join(SHORT_VIDEO_POLICIES)}, got {self.short_video!r}"
            )


@dataclass
class VideoInfo:
    """What ffmpeg reports about a file; width/height are as displayed after any rotation."""

    path: Path
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    has_audio: bool
    sar: float = 1.0
    # The average rate differs from the stream's base rate: frames are not evenly spaced in time, so fps sampling
    # picks them by their timestamps (one more ffmpeg pass) instead of by count at the average rate.
    rate_varies: bool = False
    # Only MP4/MOV headers give an average rate that can differ from the base rate; Matroska, WebM, MPEG-TS and AVI
    # state one rate whatever the spacing, so there fps sampling reads the timestamps too.
    rate_tells_spacing: bool = True
    start: float = 0.0  # the first timestamp (s), as the header gives it


def probe_video(path) -> VideoInfo:
    """Read a video's header with `ffmpeg -i` (no decoding); raise VideoDecodeError if unusable."""
    path = Path(path)
    _check_is_file(path)
    try:
        result = subprocess.run(
            [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path.absolute())],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        raise VideoReadTimeoutError(
            f"{path}: ffmpeg did not read its header within {PROBE_TIMEOUT_S} s: is the storage slow or unreachable "
            "(a network mount)? Rerun once it answers; if this file alone hangs ffmpeg, remove it from the dataset"
        ) from error
    except OSError as error:
        raise _ffmpeg_not_runnable(error) from error
    return _parse_header(path, result.stderr.decode("utf-8", errors="replace"))


def decode_video(
    path, sampling: FrameSampling, generator: torch.Generator | None = None, info: VideoInfo | None = None
) -> torch.Tensor:
    """Decode `sampling.num_frames` frames from the start of the usable span of `path`.

    Returns float32 [F, 3, H, W], RGB, in [-1, 1]. With `sampling.fps` set, frame k is the source
    frame nearest to time k / fps after the first; with `sampling.spread`, every n-th frame, spread over the whole
    usable span; otherwise they are consecutive. `generator` drives the crop
    position when sampling.crop == "random". `info` is `probe_video(path)` where the caller has it. A file that
    looks cut short, whose clip came from the part that decodes, is logged as a warning.
    """
    clip = decode_clip(path, sampling, generator, info)
    if clip.cut_short:
        logger.warning("%s: %s; %s", path, clip.cut_short.reason(), clip.cut_short.consequence(sampling))
    return clip.frames


@dataclass
class CutShort:
    """A file whose streams end well before the duration its header gives (a partial download or copy)."""

    reached_s: float
    header_s: float

    def reason(self) -> str:
        return (f"its header says {self.header_s:.2f} s but its streams end at {self.reached_s:.2f} s: the file looks "
                "truncated or damaged; re-encode or re-download it")

    def consequence(self, sampling: FrameSampling) -> str:
        return f"its clip is {self.taken(sampling)} the {self.reached_s:.2f} s that decode"

    @staticmethod
    def taken(sampling: FrameSampling) -> str:
        """How the clip of a file cut short was made from what decodes."""
        return "spread over" if sampling.spread else f"filled by short_video={sampling.short_video} from"


@dataclass
class DecodedClip:
    frames: torch.Tensor  # float32 [F, 3, H, W], RGB, in [-1, 1]
    # Set where the file looks cut short and the clip came from the part that decodes (spread over it, or filled
    # by short_video), so the caller can tell the user; a clip that fits before the cut is as it would be.
    cut_short: CutShort | None = None
    # The frames the video gave where short_video loop or pad filled the rest; None where it gave them all.
    frames_given: int | None = None
    # What ffmpeg said as it concealed damaged data on the way to the clip's frames (they may be garbled).
    decode_errors: list[str] = field(default_factory=list)


def decode_clip(
    path, sampling: FrameSampling, generator: torch.Generator | None = None, info: VideoInfo | None = None
) -> DecodedClip:
    """`decode_video`, telling where the file looks cut short instead of logging it."""
    path = Path(path)
    info = info or probe_video(path)
    crop_fractions = _crop_fractions(sampling, generator)
    # Spread sampling counts the packets anyway; elsewhere they are read only where the clip came out short.
    packets = _read_packets(path) if sampling.spread else None
    wanted, frame_count = _clip_indices(path, info, sampling, packets)
    frames, slots, available, errors = _decode_frames(path, wanted, sampling, crop_fractions)
    if sampling.spread and available < len(slots) and (decoded := _count_frames(path)) < frame_count:
        # The packets promised frames that do not decode (a damaged tail, packets that hold no frame): spread the
        # clip over those that do.
        frame_count, wanted = decoded, _spread_indices(decoded, sampling)
        frames, slots, available, errors = _decode_frames(path, wanted, sampling, crop_fractions)
    came_short = available < len(slots)
    if came_short and packets is None:
        packets = _read_packets(path)
    cut_short = _cut_short(info, packets)
    slots = _fill_short_clip(slots[:available], path, info, sampling, cut_short)
    clip = torch.from_numpy(frames[slots]).permute(0, 3, 1, 2)
    frames = clip.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)
    # A clip that fits before the cut is what the whole file would give: nothing to tell.
    return DecodedClip(frames, cut_short if sampling.spread or came_short else None,
                       frames_given=available if came_short else None, decode_errors=errors)


def _decode_frames(path: Path, wanted: list[int], sampling: FrameSampling,
                   crop_fractions: tuple[float, float] | None) -> tuple[np.ndarray, list[int], int, list[str]]:
    """The source frames `wanted` (non-decreasing) as decoded, each once; the slot of each wanted frame among
    them; how many of the wanted frames, a prefix, came back inside the usable span; and the decoding errors
    ffmpeg concealed."""
    unique = sorted(set(wanted))
    # One extra frame, skip_frames_end past the last needed one, proves the clip ends before the
    # skipped tail without decoding the rest of the file.
    sentinel = [unique[-1] + sampling.skip_frames_end] if sampling.skip_frames_end else []
    frames, errors = _stream_frames(path, unique + sentinel, sampling, crop_fractions)
    usable = _usable_count(path, unique, len(frames), sampling)
    position = {index: slot for slot, index in enumerate(unique)}
    slots = [position[index] for index in wanted]
    return frames, slots, sum(1 for slot in slots if slot < usable), errors


def repeats_frames(info: VideoInfo, sampling: FrameSampling) -> bool:
    """Whether sampling at `sampling.fps` takes some source frame twice (the video's own rate is lower; for a
    variable frame rate, its average rate)."""
    if sampling.fps is None or info.fps <= 0:
        return False
    wanted = _source_indices(info, sampling)
    return len(set(wanted)) < len(wanted)


def _usable_count(path: Path, unique: list[int], received: int, sampling: FrameSampling) -> int:
    """How many of the source frames `unique` lie in the usable span, given `received` came back."""
    if received > len(unique):  # the sentinel arrived
        return len(unique)
    if not sampling.skip_frames_end:
        return received
    # The video ended before the sentinel: only its true length tells which frames are in the tail.
    end = _count_frames(path) - sampling.skip_frames_end
    return sum(1 for index in unique[:received] if index < end)


def _check_is_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file not found; check the dataset's video paths")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes); re-download or re-encode it")
    if not os.access(path, os.R_OK):
        raise VideoNotReadableError(f"{path}: permission denied reading it; check the file's permissions "
                                    "(chmod a+r), then rerun")


def _parse_header(path: Path, text: str) -> VideoInfo:
    video_line = re.search(r"Stream #\S+.*?: Video: (.*)", text)
    if video_line is None:
        raise VideoDecodeError(path, _unreadable_reason(text))
    stream = video_line.group(1)
    size = re.search(r", (\d+)x(\d+)[ ,]", stream + " ")
    if size is None:
        raise VideoDecodeError(path, f"ffmpeg reports no frame size for the video stream ({stream[:200]})")
    width, height = int(size.group(1)), int(size.group(2))

    sar_match = re.search(r"\[SAR (\d+):(\d+) DAR", stream)
    sar = 1.0
    if sar_match and int(sar_match.group(1)) > 0 and int(sar_match.group(2)) > 0:
        sar = int(sar_match.group(1)) / int(sar_match.group(2))

    rotation = re.search(r"rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+)", text)
    if rotation and round(abs(float(rotation.group(1) or rotation.group(2)))) % 180 == 90:
        # ffmpeg auto-rotates while decoding, so describe the frames as the decoder outputs them.
        width, height, sar = height, width, 1.0 / sar

    duration_match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    duration = 0.0
    if duration_match:
        hours, minutes, seconds = duration_match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)

    start_match = re.search(r"Duration: .*?, start: (-?\d+(?:\.\d+)?)", text)
    fps = _parse_fps(stream)
    tbr = _parse_rate(stream, "tbr")
    container = re.search(r"Input #\d+, (.*?), from ", text)
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        fps=fps,
        num_frames=int(round(duration * fps)),
        duration=duration,
        has_audio=re.search(r"Stream #\S+.*?: Audio: ", text) is not None,
        sar=sar,
        # Both printed to two decimals (NTSC rates restored alike): any difference is a real one.
        rate_varies=fps > 0 and tbr > 0 and abs(fps - tbr) > 0.001,
        rate_tells_spacing=bool(container and {"mov", "mp4"} & set(container.group(1).split(","))),
        start=float(start_match.group(1)) if start_match else 0.0,
    )


def _parse_fps(stream: str) -> float:
    return _parse_rate(stream, "fps") or _parse_rate(stream, "tbr")


def _parse_rate(stream: str, unit: str) -> float:
    match = re.search(rf"([\d.]+)(k?) {unit}\b", stream)
    if match is None:
        return 0.0
    fps = float(match.group(1)) * (1000 if match.group(2) else 1)
    # ffmpeg prints rates with two decimals; restore NTSC rates (30000/1001 printed as 29.97)
    # so frame timestamps stay exact over long clips.
    ntsc_base = round(fps * 1.001)
    if fps != int(fps) and ntsc_base and abs(fps * 1.001 - ntsc_base) < 0.01:
        return ntsc_base * 1000 / 1001
    return fps


def _unreadable_reason(text: str) -> str:
    if re.search(r"Stream #\S+.*?: (Audio|Subtitle|Data): ", text):
        return "has no video stream (audio or data only); remove it from the dataset"
    if "moov atom not found" in text:
        return "not a complete MP4 (moov atom not found): truncated, still being written, or not a video"
    return f"ffmpeg cannot read it ({_ffmpeg_complaint(text)}); re-encode it or remove it from the dataset"


def _ffmpeg_complaint(text: str) -> str:
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and "At least one output file must be specified" not in line and not line.startswith("===")
    ]
    errors = [line for line in lines if re.search(r"error|invalid|could not|not found", line, re.IGNORECASE)]
    chosen = (errors or lines or ["no message"])[-1]
    return chosen[:300]


def _clip_indices(path: Path, info: VideoInfo, sampling: FrameSampling,
                  packets: PacketSpan | None) -> tuple[list[int], int | None]:
    """The source frames of the clip, in order, by timestamp where the frames may be unevenly spaced in time; and
    the video's frame count where that reading found its end (None: the header's estimate stands). `packets` is
    `_read_packets(path)` where spread sampling read it."""
    if sampling.spread:
        # The header's frame count is an estimate (duration x rate); spacing by it could aim past the end.
        frame_count = (packets and packets.frames) or _count_frames(path)
        return _spread_indices(frame_count, sampling), frame_count
    if sampling.fps is not None and (info.rate_varies or not info.rate_tells_spacing):
        clip_span = (sampling.num_frames - 1) / Fraction(sampling.fps).limit_denominator(1_000_000)
        if (timed := _frame_times(path, sampling.skip_frames_start, clip_span)) is not None:
            times, ended = timed
            return _indices_by_time(times, ended, info, sampling), len(times) if ended else None
    return _source_indices(info, sampling), None


# showinfo's lines: the time base its timestamps count in, then each frame's number in decoding order (the `n`
# that `select` counts) and its timestamp in that base.
_SHOWINFO_TIME_BASE = re.compile(r"config in time_base: (\d+)/(\d+)")
_SHOWINFO_FRAME = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(\S+)")


def _frame_times(path: Path, start: int, span_s: Fraction) -> tuple[list[Fraction], bool] | None:
    """The presentation times (s, exact) of the frames from the first, read until one lies more than `span_s`
    after frame `start` or the video ends: (times, whether it ended first). None where they cannot be read
    (no timestamps, ffmpeg failed): the caller falls back to the header's average rate.

    ffmpeg decodes the frames to report them, so this runs only where the spacing may vary; it stops as soon as
    the clip's frames are known, so a long video costs no more than the stretch the clip takes."""
    command = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-i", str(path.absolute()),
               "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", "showinfo=checksum=0", "-f", "null", "-"]
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   errors="replace")
    except OSError as error:
        raise _ffmpeg_not_runnable(error) from error
    time_base, times = None, []
    try:
        for line in process.stderr:
            if time_base is None:
                if found := _SHOWINFO_TIME_BASE.search(line):
                    time_base = Fraction(int(found.group(1)), int(found.group(2)) or 1)
                continue
            if (frame := _SHOWINFO_FRAME.search(line)) is None:
                continue
            if not frame.group(2).lstrip("-").isdigit():  # NOPTS
                return None
            times.append(int(frame.group(2)) * time_base)
            if len(times) > start + 1 and times[-1] > times[start] + span_s:
                return times, False
        # A failed run must not pass for the video's end: its clip would come out short, a skip the cache keeps.
        if process.wait() != 0 or not times:
            return None
    finally:
        process.kill()
        process.wait()
    return times, True


def _indices_by_time(times: list[Fraction], ended: bool, info: VideoInfo, sampling: FrameSampling) -> list[int]:
    """Frame k is the source frame nearest to k / fps after frame `skip_frames_start` (the later one on an exact
    tie, as `_source_indices` rounds). Times past the video's end get frame numbers past its last frame, at its
    average rate, so the clip is short as it would be by count."""
    start = sampling.skip_frames_start
    if start >= len(times):  # nothing left after the skipped frames
        return list(range(start, start + sampling.num_frames))
    fps = Fraction(sampling.fps).limit_denominator(1_000_000)
    indices, nearest = [], start
    for k in range(sampling.num_frames):
        target = times[start] + k / fps
        while nearest + 1 < len(times) and abs(times[nearest + 1] - target) <= abs(times[nearest] - target):
            nearest += 1
        beyond = math.floor((target - times[-1]) * info.fps + 0.5) if ended and nearest == len(times) - 1 else 0
        indices.append(nearest + max(beyond, 0))
    return indices


def _spread_indices(frame_count: int, sampling: FrameSampling) -> list[int]:
    """Every n-th frame from the first usable one, n the largest whole number that fits num_frames frames in the
    usable span: a clip's motion stays evenly timed (frames spaced by fractions would stutter). A span shorter
    than the clip gives its consecutive frames, and `short_video` decides what fills the rest."""
    first, last, wanted = sampling.skip_frames_start, frame_count - 1 - sampling.skip_frames_end, sampling.num_frames
    stride = max(1, (last - first) // (wanted - 1)) if wanted > 1 else 1
    return [first + k * stride for k in range(wanted)]


def _source_indices(info: VideoInfo, sampling: FrameSampling) -> list[int]:
    start = sampling.skip_frames_start
    if sampling.fps is None:
        return list(range(start, start + sampling.num_frames))
    if info.fps <= 0:
        raise VideoDecodeError(
            info.path, f"frame rate unknown, so it cannot be sampled at fps={sampling.fps}; use fps=None"
        )
    step = info.fps / sampling.fps
    # floor(x + 0.5) rather than round(): Python's round() sends exact halves to even numbers.
    return [start + math.floor(k * step + 0.5) for k in range(sampling.num_frames)]


def _crop_fractions(sampling: FrameSampling, generator: torch.Generator | None) -> tuple[float, float] | None:
    if sampling.crop == "center":
        return None
    fraction_x, fraction_y = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
    return fraction_x, fraction_y


def _filter_graph(indices: list[int], sampling: FrameSampling, crop_fractions: tuple[float, float] | None) -> str:
    width, height = sampling.width, sampling.height
    # Cover H x W in display pixels (iw*sar wide), then crop: the aspect ratio is never changed.
    factor = f"max({width}/(iw*sar),{height}/ih)"
    scale = f"scale=w='max({width},round(iw*sar*{factor}))':h='max({height},round(ih*{factor}))':flags=bicubic"
    if crop_fractions is None:
        x, y = "floor((iw-ow)/2)", "floor((ih-oh)/2)"
    else:
        x = f"min(iw-ow,floor((iw-ow+1)*{crop_fractions[0]:.9f}))"
        y = f"min(ih-oh,floor((ih-oh+1)*{crop_fractions[1]:.9f}))"
    # Cropping in rgb24 keeps odd offsets exact (yuv420p would round them to even).
    return f"select='{_select_expression(indices)}',{scale},format=rgb24,crop={width}:{height}:'{x}':'{y}',setsar=1"


def _select_expression(indices: list[int]) -> str:
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return "+".join(f"eq(n,{a})" if a == b else f"between(n,{a},{b})" for a, b in runs)


def _stream_frames(
    path: Path,
    indices: list[int],
    sampling: FrameSampling,
    crop_fractions: tuple[float, float] | None,
) -> tuple[np.ndarray, list[str]]:
    """Return uint8 [N, H, W, 3] for the source frames `indices` (fewer if the video ends first), and the decoding
    errors ffmpeg reported on the way there and concealed (a damaged middle decodes to garbled frames)."""
    height, width = sampling.height, sampling.width
    output_params = [
        "-map", "0:v:0", "-an", "-sn", "-dn",
        "-vf", _filter_graph(indices, sampling, crop_fractions),
        # Without passthrough, ffmpeg would duplicate frames to fill the gaps `select` leaves.
        "-fps_mode", "passthrough",
        "-frames:v", str(len(indices)),
    ]  # fmt: skip
    frames = np.empty((len(indices), height, width, 3), dtype=np.uint8)
    received, errors = 0, []
    reader = _imageio_ffmpeg().read_frames(str(path.absolute()), output_params=output_params)
    try:
        meta = next(reader)
        if tuple(meta["size"]) != (width, height):
            raise VideoDecodeError(path, f"ffmpeg produced {meta['size']} frames instead of {width}x{height}")
        for raw in reader:
            frames[received] = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            received += 1
            if received == len(indices):
                errors = _concealed_errors(reader)
                break
    except VideoDecodeError:
        raise
    except Exception as error:  # imageio raises OSError/RuntimeError/parse errors with ffmpeg's log
        _raise_a_stop_within(error)
        raise VideoDecodeError(path, f"ffmpeg failed while decoding ({_ffmpeg_complaint(str(error))})") from error
    finally:
        reader.close()
    return frames[:received], errors


# ffmpeg's lines (tagged "[h264 @ 0x...]") that say a decoder met damaged data and concealed it.
_DECODE_ERROR = re.compile(r"^\[.*(error|conceal|corrupt)", re.IGNORECASE)


def _concealed_errors(reader) -> list[str]:
    """The decoding errors in the ffmpeg log of `reader`, an imageio-ffmpeg read_frames generator still reading
    (its log is kept by a thread in the generator's frame, not returned: read there, as far as the thread has
    read it, without waiting). Memory addresses are left out: the lines read the same for every video."""
    catcher = reader.gi_frame.f_locals.get("log_catcher") if reader.gi_frame is not None else None
    if catcher is None:
        return []
    lines = [line for line in catcher.get_text().splitlines() if _DECODE_ERROR.search(line)]
    return [re.sub(r" @ 0x[0-9a-f]+", "", line).strip() for line in lines]


def _raise_a_stop_within(error: BaseException) -> None:
    """A Ctrl-C or SIGTERM that came while reading from ffmpeg (StoppedBySignal is an Exception too), as it is
    or wrapped in imageio's own error: it must stop the work, not count the video as unreadable (a skip the cache
    would keep)."""
    if (stop := stop_within(error)) is not None:
        raise stop


# ffmpeg's last progress line: the video frames it passed, and how far (h:m:s) the streams reached.
_FRAME_PROGRESS = re.compile(r"frame=\s*(\d+)")
_TIME_PROGRESS = re.compile(r"time=\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


@dataclass
class PacketSpan:
    """What a file's packets give, read without decoding."""

    frames: int | None  # the video stream's packets: its frame count (None where ffmpeg reports none)
    reached_s: float | None  # where the last packet of the video or audio ends, from the start


def _read_packets(path: Path) -> PacketSpan | None:
    """The video stream's frame count and how far its (and the audio's) packets reach, read without decoding:
    milliseconds where `_count_frames` decodes the whole video. None where ffmpeg fails."""
    # The audio is read too: a header's duration is that of its longest stream, often the audio.
    command = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path.absolute()), "-map", "0:v:0", "-map", "0:a?",
               "-c", "copy", "-f", "null", "-"]
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as error:
        raise _ffmpeg_not_runnable(error) from error
    if done.returncode != 0:
        return None
    counts, times = _FRAME_PROGRESS.findall(done.stderr), _TIME_PROGRESS.findall(done.stderr)
    reached = int(times[-1][0]) * 3600 + int(times[-1][1]) * 60 + float(times[-1][2]) if times else None
    return PacketSpan(frames=int(counts[-1]) if counts and int(counts[-1]) > 0 else None, reached_s=reached)


def _cut_short(info: VideoInfo, packets: PacketSpan | None) -> CutShort | None:
    """Whether the file's streams end well before the duration its header gives: it was cut short (a partial
    download or copy loses a large part). The packets' reach counts from the first timestamp, a Matroska header's
    duration from zero: the start is added back. Half a second, or a tenth of the video, of slack: an intact
    stream-copied clip (an MP4 edit list, a variable frame rate) can end a few frames before its header's
    duration, which a cut that matters to a clip does not."""
    if not info.duration or packets is None or packets.reached_s is None:
        return None
    reached = packets.reached_s + info.start
    slack = max(0.5, 0.1 * info.duration, 2 / info.fps + 0.05 if info.fps > 0 else 0.15)
    return CutShort(reached, info.duration) if info.duration - reached > slack else None


def _count_frames(path: Path) -> int:
    try:
        count, _ = _imageio_ffmpeg().count_frames_and_secs(str(path.absolute()))
    except Exception as error:  # a RuntimeError carrying ffmpeg's log
        _raise_a_stop_within(error)
        raise VideoDecodeError(path, f"cannot count frames ({_ffmpeg_complaint(str(error))})") from error
    return int(count or 0)


def _fill_short_clip(slots: list[int], path: Path, info: VideoInfo, sampling: FrameSampling,
                     cut_short: CutShort | None = None) -> list[int]:
    needed = sampling.num_frames
    if len(slots) == needed:
        return slots
    damaged = cut_short.reason() if cut_short else ""
    if not slots or sampling.short_video == "skip":
        rate = (f"at {sampling.fps:g} fps from a {info.fps:g} fps source" if sampling.fps
                else "spread over the video" if sampling.spread else "consecutive frames")
        raise VideoTooShortError(
            path,
            f"only {len(slots)} of the {needed} frames needed are available ({rate}, skipping "
            f"{sampling.skip_frames_start} frames at the start and {sampling.skip_frames_end} at the end); "
            f"{damaged or _short_clip_advice(len(slots), info, sampling)}",
        )
    if sampling.short_video == "loop":
        return [slots[k % len(slots)] for k in range(needed)]
    return slots + [slots[-1]] * (needed - len(slots))


def _short_clip_advice(available: int, info: VideoInfo, sampling: FrameSampling) -> str:
    """The settings that would make the clip fit, naming only those that can help here."""
    options = []
    if available:  # with no frame left, asking for fewer or filling them cannot help
        options.append("fewer --max_num_frames")
        if sampling.fps and sampling.fps < info.fps:
            # A higher rate takes its frames from a shorter stretch of the video.
            options.append(f"a higher --fps (up to the video's {info.fps:g})")
    skips = [f"--{name} {getattr(sampling, name)}" for name in ("skip_frames_start", "skip_frames_end")
             if getattr(sampling, name)]
    if skips:
        options.append(f"less skipping ({', '.join(skips)})")
    if not options:
        return "the video has no frames to give; re-encode it or remove it from the dataset"
    advice = "ask for " + " or ".join(options)
    if available and sampling.short_video == "skip":
        advice += ", or --short_video loop or pad"
    return advice


class _DropResizeNotice(logging.Filter):
    """imageio-ffmpeg warns whenever output size differs from the source; here that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("The frame size for reading")


_imageio_logger = logging.getLogger("imageio_ffmpeg")
if not any(type(existing).__name__ == _DropResizeNotice.__name__ for existing in _imageio_logger.filters):
    _imageio_logger.addFilter(_DropResizeNotice())
