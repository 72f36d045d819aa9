"""Make a tiny, real text-video dataset: coloured shapes moving over gradient backgrounds.

Used by smoke tests, tutorials and the tiny-model recipes, so that the whole pipeline (listing,
decoding, caching, training) runs on genuine H.264 files without downloading anything. Every
caption states the shape, its colour, its direction and the background colour, so they are true.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from blueberry_video.data.video_writer import write_mp4

SHAPE_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 230),
    "yellow": (245, 215, 40),
    "white": (245, 245, 245),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
}
BACKGROUND_COLOURS = {
    "blue": (30, 60, 160),
    "green": (30, 120, 50),
    "grey": (120, 120, 120),
    "purple": (90, 40, 120),
}
SHAPES = ("circle", "square")
DIRECTIONS = ("left to right", "right to left", "top to bottom", "bottom to top")


def create_sample_videos(
    out_dir,
    num: int = 8,
    num_frames: int = 49,
    height: int = 96,
    width: int = 160,
    fps: float = 8,
    seed: int = 0,
) -> Path:
    """Write `num` clips to out_dir/videos/NNNN.mp4 plus out_dir/metadata.json; return the json path."""
    if num < 1 or num_frames < 1:
        raise ValueError(f"create_sample_videos needs num >= 1 and num_frames >= 1, got {num} and {num_frames}")
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise ValueError(
            f"create_sample_videos needs even height and width of at least 16 (H.264 yuv420p), "
            f"got {height}x{width}; pick e.g. height=96, width=160"
        )
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    scenes = _pick_scenes(rng, num)

    records = []
    for index, (shape, colour, direction, background) in enumerate(scenes):
        frames = _render(rng, shape, colour, direction, background, num_frames, height, width)
        relative = f"videos/{index:04d}.mp4"
        write_mp4(frames, out_dir / relative, fps=fps)
        article = "an" if colour[0] in "aeiou" else "a"
        caption = f"{article} {colour} {shape} moving {direction} over a {background} background"
        records.append({"file": relative, "caption": caption})

    metadata_path = out_dir / "metadata.json"
    metadata_path.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return metadata_path


def _pick_scenes(rng: np.random.Generator, num: int) -> list[tuple[str, str, str, str]]:
    # A shuffled list of distinct combinations keeps captions distinct until they run out.
    combos = [
        (shape, colour, direction, background)
        for shape, colour, direction, background in itertools.product(
            SHAPES, SHAPE_COLOURS, DIRECTIONS, BACKGROUND_COLOURS
        )
        if colour != background
    ]
    order = rng.permutation(len(combos))
    return [combos[order[i % len(combos)]] for i in range(num)]


def _render(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    direction: str,
    background: str,
    num_frames: int,
    height: int,
    width: int,
) -> np.ndarray:
    """Return uint8 [F, H, W, 3]: the shape crosses the frame edge to edge over the clip."""
    radius = max(2.0, rng.uniform(0.12, 0.22) * min(height, width))
    progress = np.linspace(0.0, 1.0, num_frames)
    horizontal = direction in ("left to right", "right to left")
    forward = direction in ("left to right", "top to bottom")
    travel_length = (width if horizontal else height) - 2 * radius
    along = radius + travel_length * (progress if forward else 1.0 - progress)
    across = rng.uniform(radius, (height if horizontal else width) - radius)
    centre_x, centre_y = (along, np.full_like(along, across)) if horizontal else (np.full_like(along, across), along)

    ys = np.arange(height, dtype=np.float32)[None, :, None]
    xs = np.arange(width, dtype=np.float32)[None, None, :]
    dx = xs - centre_x[:, None, None].astype(np.float32)
    dy = ys - centre_y[:, None, None].astype(np.float32)
    if shape == "circle":
        inside = dx * dx + dy * dy <= radius * radius
    else:
        inside = (np.abs(dx) <= radius) & (np.abs(dy) <= radius)

    # A horizontal brightness ramp gives the background texture without changing its named colour.
    ramp = 0.45 + 0.55 * np.linspace(0.0, 1.0, width, dtype=np.float32)
    backdrop = ramp[None, :, None] * np.asarray(BACKGROUND_COLOURS[background], dtype=np.float32)
    backdrop = np.broadcast_to(backdrop, (height, width, 3)).astype(np.uint8)
    fill = np.asarray(SHAPE_COLOURS[colour], dtype=np.uint8)
    return np.where(inside[..., None], fill, backdrop[None])
