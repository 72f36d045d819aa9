import json

import pytest
import torch

from blueberry_video.data.decode import FrameSampling, decode_video, probe_video
from blueberry_video.data.formats import load_dataset_entries
from blueberry_video.data.sample_videos import SHAPE_COLOURS, create_sample_videos

NUM, FRAMES, HEIGHT, WIDTH = 4, 9, 48, 64


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    create_sample_videos(out, num=NUM, num_frames=FRAMES, height=HEIGHT, width=WIDTH, fps=8, seed=3)
    return out


def decode_all(path) -> torch.Tensor:
    return decode_video(path, FrameSampling(num_frames=FRAMES, height=HEIGHT, width=WIDTH))


def shape_centre(frame: torch.Tensor, colour: str) -> tuple[float, float]:
    """(x, y) centroid of the pixels close to the shape's colour in a [3, H, W] frame in [-1, 1]."""
    rgb = (frame.permute(1, 2, 0) + 1) * 127.5
    target = torch.tensor(SHAPE_COLOURS[colour], dtype=torch.float32)
    rows, cols = ((rgb - target).abs().max(-1).values < 40).nonzero(as_tuple=True)
    assert len(rows) > 20, f"no {colour} shape found"
    return float(cols.float().mean()), float(rows.float().mean())


def test_metadata_lists_every_video(sample_dir):
    metadata = json.loads((sample_dir / "metadata.json").read_text())
    assert [record["file"] for record in metadata] == [f"videos/{i:04d}.mp4" for i in range(NUM)]
    assert len({record["caption"] for record in metadata}) == NUM
    assert all((sample_dir / record["file"]).is_file() for record in metadata)


def test_videos_are_real_h264_with_the_requested_size(sample_dir):
    for index in range(NUM):
        info = probe_video(sample_dir / "videos" / f"{index:04d}.mp4")
        assert (info.width, info.height, info.fps, info.num_frames) == (WIDTH, HEIGHT, 8.0, FRAMES)
        assert decode_all(info.path).shape == (FRAMES, 3, HEIGHT, WIDTH)


def test_frames_move(sample_dir):
    clip = decode_all(sample_dir / "videos" / "0000.mp4")
    differences = (clip[1:] - clip[:-1]).abs().flatten(1).max(1).values
    assert bool((differences > 0.2).all())


def test_captions_tell_the_truth(sample_dir):
    for record in json.loads((sample_dir / "metadata.json").read_text()):
        words = record["caption"].split()
        colour, direction = words[1], " ".join(words[4:7])
        clip = decode_all(sample_dir / record["file"])
        (x0, y0), (x1, y1) = shape_centre(clip[0], colour), shape_centre(clip[-1], colour)
        movement = {
            "left to right": x1 - x0,
            "right to left": x0 - x1,
            "top to bottom": y1 - y0,
            "bottom to top": y0 - y1,
        }
        assert movement[direction] > 10, f"{record['caption']}: moved {movement}"


def test_same_seed_gives_the_same_dataset(sample_dir, tmp_path):
    create_sample_videos(tmp_path, num=2, num_frames=FRAMES, height=HEIGHT, width=WIDTH, fps=8, seed=3)
    again = json.loads((tmp_path / "metadata.json").read_text())
    assert again == json.loads((sample_dir / "metadata.json").read_text())[:2]
    assert torch.equal(decode_all(tmp_path / "videos" / "0001.mp4"), decode_all(sample_dir / "videos" / "0001.mp4"))


def test_output_is_a_loadable_dataset(sample_dir):
    listing = load_dataset_entries(sample_dir)
    assert len(listing) == NUM and not listing.skipped
    assert all(entry.caption.startswith(("a ", "an ")) for entry in listing)


@pytest.mark.parametrize("size", [(47, 64), (48, 10)])
def test_odd_or_tiny_sizes_are_refused(tmp_path, size):
    with pytest.raises(ValueError, match="even height and width"):
        create_sample_videos(tmp_path, num=1, num_frames=2, height=size[0], width=size[1])
