import os
import stat

import numpy as np
import pytest
import torch

from blueberry_video.data.decode import FrameSampling, decode_video, probe_video
from blueberry_video.data.video_writer import frames_to_uint8, write_mp4


def gradient_frames(num=4, height=32, width=48) -> np.ndarray:
    frames = np.zeros((num, height, width, 3), dtype=np.uint8)
    frames[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, None, :]
    frames[..., 2] = np.arange(num, dtype=np.uint8)[:, None, None] * 60
    return frames


def test_write_mp4_round_trips(tmp_path):
    frames = gradient_frames()
    path = write_mp4(torch.from_numpy(frames), tmp_path / "out" / "clip.mp4", fps=12)
    assert path == tmp_path / "out" / "clip.mp4"
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.num_frames) == (48, 32, 12.0, 4)
    decoded = decode_video(path, FrameSampling(num_frames=4, height=32, width=48))
    restored = frames_to_uint8(decoded).astype(np.int16)
    assert np.abs(restored - frames).mean() < 4


def test_write_mp4_leaves_no_temp_files_and_normal_permissions(tmp_path):
    write_mp4(gradient_frames(), tmp_path / "clip.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "clip.mp4").stat().st_mode) == 0o666 & ~umask


def test_write_mp4_replaces_an_existing_file(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")
    write_mp4(gradient_frames(num=2), target)
    assert probe_video(target).num_frames == 2


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((2, 31, 48, 3), np.uint8), "even width and height"),
        (np.zeros((2, 32, 48, 3), np.float32), "must be uint8"),
        (np.zeros((2, 3, 32, 48), np.uint8), r"\[F, H, W, 3\]"),
        (np.zeros((0, 32, 48, 3), np.uint8), r"F >= 1"),
    ],
)
def test_write_mp4_rejects_bad_frames(tmp_path, frames, message):
    with pytest.raises(ValueError, match=message):
        write_mp4(frames, tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []


def test_frames_to_uint8_handles_both_layouts_and_ranges():
    channels_first = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 4)
    assert frames_to_uint8(channels_first).shape == (2, 2, 4, 3)
    assert frames_to_uint8(channels_first)[0, 0, 0].tolist() == [0, 128, 255]
    channels_last = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3).expand(2, 2, 4, 3)
    assert frames_to_uint8(channels_last, value_range=(0, 1))[1, 1, 3].tolist() == [0, 128, 255]
    assert frames_to_uint8(torch.full((1, 3, 2, 2), 7.0))[0, 0, 0].tolist() == [255, 255, 255]


def test_frames_to_uint8_rejects_other_shapes():
    with pytest.raises(ValueError, match="unsqueeze"):
        frames_to_uint8(torch.zeros(3, 8, 8))
