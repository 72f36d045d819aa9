"""Real encoded test videos, made once per session with the ffmpeg binary imageio-ffmpeg ships."""

from __future__ import annotations

import subprocess

import imageio_ffmpeg
import pytest


def encode(out, *args: str):
    """Run ffmpeg with `args` writing to `out`; fail loudly with ffmpeg's message."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args, str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"ffmpeg failed: {' '.join(command)}\n{result.stderr}"
    return out


H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
# Lossless H.264 keeps per-frame brightness exact, so tests can tell frames apart by it.
H264_LOSSLESS = ("-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p")


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def landscape_video(video_dir):
    """320x240, 24 fps, 48 frames of testsrc (detailed, moving content)."""
    return encode(video_dir / "landscape.mp4", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=24:duration=2", *H264)


@pytest.fixture(scope="session")
def portrait_video(video_dir):
    """180x320 black with a centred white 90x90 square."""
    return encode(
        video_dir / "portrait.mp4",
        "-f", "lavfi", "-i", "color=c=black:s=180x320:r=8:d=1",
        "-vf", "drawbox=x=45:y=115:w=90:h=90:color=white:t=fill",
        *H264,
    )  # fmt: skip


@pytest.fixture(scope="session")
def sar_video(video_dir):
    """240x240 coded, SAR 2:1 (displayed 480x240); a 60x120 coded box that displays as a square."""
    return encode(
        video_dir / "sar2.mp4",
        "-f", "lavfi", "-i", "color=c=black:s=240x240:r=8:d=1",
        "-vf", "drawbox=x=90:y=60:w=60:h=120:color=white:t=fill,setsar=2",
        *H264,
    )  # fmt: skip


@pytest.fixture(scope="session")
def ntsc_video(video_dir):
    """64x64 at 30000/1001 fps, 60 frames; frame n has luma 16 + 3n."""
    return encode(
        video_dir / "ntsc.mp4",
        "-f", "lavfi", "-i", "color=c=black:s=64x64:r=30000/1001:d=2",
        "-vf", "geq=lum='16+N*3':cb=128:cr=128",
        *H264_LOSSLESS,
    )  # fmt: skip


@pytest.fixture(scope="session")
def rgb_video(video_dir):
    """96x32: left third red, middle green, right blue."""
    return encode(
        video_dir / "rgb.mp4",
        "-f", "lavfi", "-i", "color=c=red:s=96x32:r=8:d=0.5",
        "-vf", "drawbox=x=32:y=0:w=32:h=32:color=lime:t=fill,drawbox=x=64:y=0:w=32:h=32:color=blue:t=fill",
        *H264,
    )  # fmt: skip


@pytest.fixture(scope="session")
def audio_video(video_dir):
    """320x240 video with an AAC audio track."""
    return encode(
        video_dir / "with_audio.mp4",
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=24:duration=1",
        "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
        *H264, "-c:a", "aac", "-shortest",
    )  # fmt: skip


@pytest.fixture(scope="session")
def short_video(video_dir):
    """5 frames of 64x48 testsrc."""
    return encode(video_dir / "short.mp4", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=8", "-frames:v", "5", *H264)


@pytest.fixture(scope="session")
def long_video(video_dir):
    """600 frames (20 s at 30 fps) of 64x48 testsrc."""
    return encode(video_dir / "long.mp4", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30", "-frames:v", "600", *H264)


@pytest.fixture(scope="session")
def rotated_video(video_dir, landscape_video):
    """The landscape video with a 90-degree display rotation: players show it 240x320."""
    return encode(video_dir / "rotated.mp4", "-display_rotation:v:0", "90", "-i", str(landscape_video), "-c", "copy")


@pytest.fixture(scope="session")
def audio_only_video(video_dir):
    return encode(video_dir / "audio_only.mp4", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac")


@pytest.fixture(scope="session")
def zero_byte_video(video_dir):
    path = video_dir / "zero.mp4"
    path.write_bytes(b"")
    return path


@pytest.fixture(scope="session")
def truncated_video(video_dir, landscape_video):
    path = video_dir / "truncated.mp4"
    data = landscape_video.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="session")
def damaged_middle_video(video_dir):
    """3 s at 24 fps, one keyframe, 3000 bytes of frame data zeroed near the start: complete and readable, but the
    decoder meets damaged data in the first frames and conceals it (garbled frames, no failure)."""
    whole = encode(video_dir / "whole.mp4", "-f", "lavfi", "-i", "testsrc=size=160x96:rate=24", "-t", "3", *H264,
                   "-g", "1000", "-movflags", "+faststart")
    data = bytearray(whole.read_bytes())
    start = data.find(b"mdat") + 3000
    data[start : start + 3000] = bytes(3000)
    path = video_dir / "damaged_middle.mp4"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="session")
def truncated_faststart_video(video_dir):
    """The index (moov) first, the frames cut off: the header still says 2 s, only part of it decodes."""
    full = encode(video_dir / "faststart.mp4", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=24:duration=2",
                  *H264, "-movflags", "+faststart")
    path = video_dir / "truncated_faststart.mp4"
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def cut_in_half(path, out):
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture(scope="session")
def mkv_video(video_dir):
    """320x240, 24 fps, 2 s of testsrc in Matroska, whose header gives the duration up front."""
    return encode(video_dir / "whole.mkv", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=24:duration=2", *H264)


@pytest.fixture(scope="session")
def truncated_mkv_video(video_dir, mkv_video):
    """`mkv_video` cut in half, as a partial download is: the header still says 2 s, about 0.7 s decodes."""
    return cut_in_half(mkv_video, video_dir / "truncated.mkv")


@pytest.fixture(scope="session")
def truncated_audio_mkv_video(video_dir):
    """2 s of video and 2 s of audio, cut in half: both streams end early, so the header's 2 s is not the audio's."""
    whole = encode(video_dir / "whole_with_audio.mkv", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=24:duration=2",
                   "-f", "lavfi", "-i", "sine=frequency=440:duration=2", *H264, "-c:a", "aac")
    return cut_in_half(whole, video_dir / "truncated_with_audio.mkv")


@pytest.fixture(scope="session")
def garbage_video(video_dir):
    path = video_dir / "garbage.mp4"
    # Fixed bytes (not os.urandom) so a failure reproduces.
    path.write_bytes(bytes((i * 7919 + 13) % 251 for i in range(4096)))
    return path
