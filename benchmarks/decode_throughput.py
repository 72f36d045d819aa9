"""Measure decode_video throughput (clip frames per second) on generated 720p and 320x240 videos.

    python benchmarks/decode_throughput.py --repeats 5 [--json]

Each row decodes one 49-frame clip per repeat (a fresh ffmpeg process each time, as in training)
and reports the median. "every frame" takes consecutive source frames; "8 fps" samples a 30 fps
source at 8 fps, so ffmpeg decodes about 3.75x as many source frames as it returns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python benchmarks/<name>.py` puts benchmarks/ on sys.path, not the repo root the imports below need.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imageio_ffmpeg

from benchmarks.common import positive_int
from blueberry_video.data.decode import FrameSampling, decode_video

SOURCES = {
    "1280x720": "testsrc2=size=1280x720:rate=30:duration=10",
    "320x240": "testsrc2=size=320x240:rate=30:duration=10",
}
TARGETS = [(480, 720), (96, 160)]
RATES = [None, 8.0]


def make_source(folder: Path, name: str, lavfi: str) -> Path:
    path = folder / f"{name}.mp4"
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", lavfi, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return path


def measure(path: Path, sampling: FrameSampling, repeats: int) -> float:
    decode_video(path, sampling)  # warm the page cache so every repeat reads from memory
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode_video(path, sampling)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--frames", type=positive_int, default=49)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        sources = {name: make_source(Path(folder), name, lavfi) for name, lavfi in SOURCES.items()}
        for name, path in sources.items():
            for height, width in TARGETS:
                for fps in RATES:
                    sampling = FrameSampling(num_frames=args.frames, height=height, width=width, fps=fps)
                    seconds = measure(path, sampling, args.repeats)
                    rows.append(
                        {
                            "source": name,
                            "target": f"{height}x{width}",
                            "sampling": "every frame" if fps is None else f"{fps:g} fps",
                            "frames": args.frames,
                            "median_s": round(seconds, 4),
                            "frames_per_s": round(args.frames / seconds, 1),
                        }
                    )

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'source':<10} {'target HxW':<11} {'sampling':<12} {'frames':>6} {'median s':>9} {'frames/s':>9}")
    for row in rows:
        print(
            f"{row['source']:<10} {row['target']:<11} {row['sampling']:<12} {row['frames']:>6} "
            f"{row['median_s']:>9.3f} {row['frames_per_s']:>9.1f}"
        )


if __name__ == "__main__":
    main()
