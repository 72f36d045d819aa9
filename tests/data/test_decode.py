import dataclasses
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch

from blueberry_video.data import decode
from blueberry_video.data.decode import (
    FrameSampling,
    VideoDecodeError,
    VideoTooShortError,
    decode_clip,
    decode_video,
    probe_video,
)
from blueberry_video.errors import StoppedBySignal
from blueberry_video.stop_signals import stop_with_message
from tests.conftest import REPO_ROOT


def assert_centred_square(frame: torch.Tensor, side: int) -> None:
    """The bright pixels of a [3, H, W] frame form a side x side square in the middle."""
    rows, cols = (frame.mean(0) > 0).nonzero(as_tuple=True)
    top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    assert (bottom - top + 1, right - left + 1) == (pytest.approx(side, abs=2), pytest.approx(side, abs=2))
    centre = ((top + bottom) / 2, (left + right) / 2)
    assert centre == (
        pytest.approx((frame.shape[1] - 1) / 2, abs=1.5),
        pytest.approx((frame.shape[2] - 1) / 2, abs=1.5),
    )


def frame_numbers(clip: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """Which reference frame each clip frame is, matched by mean brightness."""
    levels = reference.mean((1, 2, 3))
    return [int((levels - frame.mean()).abs().argmin()) for frame in clip]


def test_probe_reports_size_rate_and_streams(landscape_video, audio_video):
    info = probe_video(landscape_video)
    assert (info.width, info.height, info.fps, info.num_frames) == (320, 240, 24.0, 48)
    assert info.duration == pytest.approx(2.0)
    assert info.sar == 1.0 and not info.has_audio
    assert probe_video(audio_video).has_audio


def test_probe_reads_sample_aspect_ratio_ntsc_rate_and_rotation(sar_video, ntsc_video, rotated_video):
    assert probe_video(sar_video).sar == 2.0
    assert probe_video(ntsc_video).fps == pytest.approx(30000 / 1001, abs=1e-9)
    rotated = probe_video(rotated_video)
    assert (rotated.width, rotated.height) == (240, 320)


def test_decode_returns_float_rgb_clip_in_unit_range(landscape_video):
    clip = decode_video(landscape_video, FrameSampling(num_frames=8, height=64, width=96))
    assert clip.shape == (8, 3, 64, 96)
    assert clip.dtype == torch.float32 and clip.is_contiguous()
    assert clip.min() >= -1.0 and clip.max() <= 1.0
    assert clip.max() - clip.min() > 1.8


def test_channels_are_rgb(rgb_video):
    clip = decode_video(rgb_video, FrameSampling(num_frames=2, height=32, width=96))
    for third, channel in enumerate((0, 1, 2)):
        band = clip[0, :, 4:28, third * 32 + 6 : third * 32 + 26].mean((1, 2))
        assert band[channel] > 0.7, f"band {third}: {band}"
        assert all(band[other] < -0.7 for other in range(3) if other != channel), f"band {third}: {band}"


def test_portrait_video_is_cropped_not_stretched(portrait_video):
    # 180x320 -> covers 96 wide at scale 96/180, so the 90x90 square becomes 48x48 in the middle.
    clip = decode_video(portrait_video, FrameSampling(num_frames=1, height=64, width=96))
    assert_centred_square(clip[0], 48)


def test_non_square_pixels_keep_display_shape(sar_video):
    # Displayed 480x240 with a 120x120 square; to 120x120 it is scaled by 0.5 and centre-cropped.
    clip = decode_video(sar_video, FrameSampling(num_frames=1, height=120, width=120))
    assert_centred_square(clip[0], 60)


def test_rotated_video_decodes_upright(rotated_video):
    assert decode_video(rotated_video, FrameSampling(num_frames=2, height=64, width=48)).shape == (2, 3, 64, 48)


def test_consecutive_frames_after_skipping_the_start(ntsc_video):
    reference = decode_video(ntsc_video, FrameSampling(num_frames=60, height=16, width=16))
    clip = decode_video(ntsc_video, FrameSampling(num_frames=6, height=16, width=16, skip_frames_start=5))
    assert frame_numbers(clip, reference) == [5, 6, 7, 8, 9, 10]
    assert torch.equal(clip, reference[5:11])


@pytest.mark.parametrize("skip", [0, 3])
def test_fps_sampling_picks_nearest_source_frames(ntsc_video, skip):
    reference = decode_video(ntsc_video, FrameSampling(num_frames=60, height=16, width=16))
    clip = decode_video(ntsc_video, FrameSampling(num_frames=10, height=16, width=16, fps=8, skip_frames_start=skip))
    # Target frame k sits at k/8 s; the nearest 29.97 fps frame is round(k * 30000/1001 / 8).
    expected = [skip + index for index in (0, 4, 7, 11, 15, 19, 22, 26, 30, 34)]
    assert frame_numbers(clip, reference) == expected


@pytest.mark.parametrize("num_frames, skip_start, skip_end, expected", [
    (10, 0, 0, range(0, 55, 6)),  # 59 // 9 = 6: the whole 60-frame video
    (10, 3, 2, range(3, 58, 6)),  # from the first usable frame to the last
    (5, 0, 0, range(0, 57, 14)),
    (50, 0, 0, range(50)),  # no room for every other frame: consecutive
    (1, 7, 0, [7]),
])
def test_spread_sampling_takes_every_nth_frame_over_the_whole_video(ntsc_video, num_frames, skip_start, skip_end,
                                                                    expected, monkeypatch):
    reference = decode_video(ntsc_video, FrameSampling(num_frames=60, height=16, width=16))
    decoded_to_count = []
    monkeypatch.setattr(decode, "_count_frames", lambda path: decoded_to_count.append(path))
    clip = decode_video(ntsc_video, FrameSampling(num_frames=num_frames, height=16, width=16, spread=True,
                                                  skip_frames_start=skip_start, skip_frames_end=skip_end))
    assert frame_numbers(clip, reference) == list(expected)
    assert not decoded_to_count  # the packets gave the count: the video is decoded once, for the clip


def test_spread_sampling_counts_the_frames_that_decode_where_the_packets_promise_more(truncated_faststart_video):
    # Cut short: 18 packets, of which 17 decode. Spaced by the packets, the second frame would be the 18th.
    reference = decode_video(truncated_faststart_video, FrameSampling(num_frames=17, height=32, width=32))
    clip = decode_video(truncated_faststart_video, FrameSampling(num_frames=2, height=32, width=32, spread=True))
    assert torch.equal(clip, reference[[0, 16]])


def test_spread_sampling_of_a_video_shorter_than_the_clip_follows_the_short_video_policy(ntsc_video):
    reference = decode_video(ntsc_video, FrameSampling(num_frames=60, height=16, width=16))
    with pytest.raises(VideoTooShortError, match=r"only 50 of the 61 frames needed are available \(spread over the "
                                                 r"video, skipping 0 frames at the start and 10 at the end\)"):
        decode_video(ntsc_video, FrameSampling(num_frames=61, height=16, width=16, spread=True, skip_frames_end=10))
    looped = decode_video(ntsc_video, FrameSampling(num_frames=61, height=16, width=16, spread=True,
                                                    skip_frames_end=10, short_video="loop"))
    assert frame_numbers(looped, reference) == [*range(50), *range(11)]


def test_fps_sampling_of_a_variable_frame_rate_takes_the_frame_nearest_each_time(tmp_path):
    from tests.data.conftest import H264_LOSSLESS, encode

    # 24 frames, frame n of luma 16 + 8n: the first 12 at 1/16 s apart, the rest at 1/8 s (10.97 fps on average).
    uneven = encode(tmp_path / "uneven.mp4", "-f", "lavfi", "-i", "color=c=black:s=64x64:r=16:d=1.5", "-vf",
                    "geq=lum='16+N*8':cb=128:cr=128,setpts='if(lt(N,12),N/16/TB,(12/16+(N-12)/8)/TB)'",
                    "-fps_mode", "vfr", *H264_LOSSLESS)
    assert probe_video(uneven).rate_varies
    reference = decode_video(uneven, FrameSampling(num_frames=24, height=16, width=16))
    clip = decode_video(uneven, FrameSampling(num_frames=10, height=16, width=16, fps=8))
    # At k/8 s: every second frame while they come 1/16 s apart, then every frame (by count at the average rate
    # it would be 0, 1, 3, 4, 5, 7, 8, 10, 11, 12: the motion sped up and slowed down with the recording).
    assert frame_numbers(clip, reference) == [0, 2, 4, 6, 8, 10, 12, 13, 14, 15]
    skipped = decode_video(uneven, FrameSampling(num_frames=5, height=16, width=16, fps=8, skip_frames_start=5))
    assert frame_numbers(skipped, reference) == [5, 7, 9, 11, 13]  # timed from the first frame after the skip
    # 2.4 s at 8 fps is past the video's 2.19 s: short, as by count.
    with pytest.raises(VideoTooShortError, match="only 18 of the 20 frames"):
        decode_video(uneven, FrameSampling(num_frames=20, height=16, width=16, fps=8))
    # The times are read only as far as the clip reaches, not to the end of a long video.
    times, ended = decode._frame_times(uneven, 0, Fraction(1, 2))
    assert not ended and times[:3] == [0, Fraction(1, 16), Fraction(1, 8)] and len(times) < 24
    # Matroska (and WebM, MPEG-TS, AVI) state one rate whatever the spacing: the same frames come from the times.
    remuxed = encode(tmp_path / "uneven.mkv", "-i", str(uneven), "-c", "copy")
    info = probe_video(remuxed)
    assert not info.rate_varies and not info.rate_tells_spacing
    assert frame_numbers(decode_video(remuxed, FrameSampling(num_frames=10, height=16, width=16, fps=8)),
                         reference) == [0, 2, 4, 6, 8, 10, 12, 13, 14, 15]


def test_fps_sampling_by_time_breaks_an_exact_tie_towards_the_later_frame(tmp_path):
    from tests.data.conftest import H264_LOSSLESS, encode

    # Frames at 0, 0.349, 0.449, 0.499, 0.6, 0.7 s: 0.349 + 1/8 = 0.474 lies exactly between frames 2 and 3,
    # which a sum of decimal floats would not see.
    times = "if(eq(N,0),0,if(eq(N,1),349,if(eq(N,2),449,if(eq(N,3),499,if(eq(N,4),600,700)))))"
    uneven = encode(tmp_path / "tie.mp4", "-f", "lavfi", "-i", "color=c=black:s=64x64:r=10:d=0.6", "-vf",
                    f"geq=lum='16+N*30':cb=128:cr=128,settb=1/1000,setpts='{times}'", "-fps_mode", "vfr",
                    "-enc_time_base", "1:1000", *H264_LOSSLESS)
    assert probe_video(uneven).rate_varies
    reference = decode_video(uneven, FrameSampling(num_frames=6, height=16, width=16))
    clip = decode_video(uneven, FrameSampling(num_frames=2, height=16, width=16, fps=8, skip_frames_start=1))
    assert frame_numbers(clip, reference) == [1, 3]


def test_a_drop_of_a_few_frames_in_an_mp4_is_a_variable_rate(tmp_path):
    from tests.data.conftest import H264, encode

    # 30 fps for 10 s with frame 150 dropped and the others kept at their times: 29.9 fps on average.
    dropped = encode(tmp_path / "dropped.mp4", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30:duration=10",
                     "-vf", "select='not(eq(n,150))'", "-fps_mode", "vfr", *H264)
    assert probe_video(dropped).rate_varies


def test_a_timestamp_reading_that_fails_is_not_taken_for_the_videos_end(garbage_video):
    # ffmpeg exits with an error: no times (the clip falls back to the header's rate), not "no frames left".
    assert decode._frame_times(garbage_video, 0, Fraction(1)) is None


def test_fps_above_source_rate_repeats_frames(ntsc_video):
    reference = decode_video(ntsc_video, FrameSampling(num_frames=60, height=16, width=16))
    clip = decode_video(ntsc_video, FrameSampling(num_frames=4, height=16, width=16, fps=60000 / 1001))
    assert frame_numbers(clip, reference) == [0, 1, 1, 2]


def test_short_video_skip_policy_raises_with_counts(short_video):
    with pytest.raises(VideoTooShortError) as caught:
        decode_video(short_video, FrameSampling(num_frames=8, height=48, width=64))
    message = str(caught.value)
    assert message.startswith(str(short_video))
    assert "only 5 of the 8 frames" in message and "--short_video loop" in message
    assert caught.value.path == short_video


def test_short_video_advice_names_the_settings_that_would_help(short_video, ntsc_video):
    with pytest.raises(VideoTooShortError) as caught:
        decode_video(short_video, FrameSampling(num_frames=8, height=48, width=64))
    assert caught.value.reason.endswith("ask for fewer --max_num_frames, or --short_video loop or pad")
    # At 8 fps, 20 frames span 2.4 s of the 2 s video; closer to its own 29.97 fps they would span less.
    with pytest.raises(VideoTooShortError) as caught:
        decode_video(ntsc_video, FrameSampling(num_frames=20, height=16, width=16, fps=8))
    assert "a higher --fps (up to the video's 29.97)" in caught.value.reason


def test_short_video_advice_leaves_out_the_policy_already_set(short_video):
    # loop and pad fill a clip from the frames there are; with every frame skipped only skipping less helps.
    with pytest.raises(VideoTooShortError) as caught:
        decode_video(
            short_video, FrameSampling(num_frames=2, height=48, width=64, skip_frames_start=9, short_video="loop")
        )
    assert caught.value.reason.endswith("; ask for less skipping (--skip_frames_start 9)")
    assert "short_video=" not in caught.value.reason


def test_skipping_the_end_of_an_intact_video_is_called_short_not_damaged(ntsc_video, truncated_faststart_video):
    # All 60 frames decode; skipping 55 at the end leaves 5 of the 9 needed. The skip is the cause, not the file.
    with pytest.raises(VideoTooShortError) as caught:
        decode_video(ntsc_video, FrameSampling(num_frames=9, height=16, width=16, skip_frames_end=55))
    assert "only 5 of the 9 frames" in caught.value.reason
    assert "truncated or damaged" not in caught.value.reason
    assert "less skipping (--skip_frames_end 55)" in caught.value.reason
    # A file cut short is still called damaged: its header promises 48 frames, enough for 20 plus 5 skipped.
    with pytest.raises(VideoTooShortError, match="header says 2.00 s .* truncated or damaged"):
        decode_video(truncated_faststart_video, FrameSampling(num_frames=20, height=48, width=64, skip_frames_end=5))


def test_short_video_loop_and_pad_policies(short_video):
    full = decode_video(short_video, FrameSampling(num_frames=5, height=48, width=64))
    looped = decode_video(short_video, FrameSampling(num_frames=12, height=48, width=64, short_video="loop"))
    padded = decode_video(short_video, FrameSampling(num_frames=8, height=48, width=64, short_video="pad"))
    assert torch.equal(looped, torch.cat([full, full, full[:2]]))
    assert torch.equal(padded, torch.cat([full, full[4:].expand(3, -1, -1, -1)]))


def test_skip_frames_end_is_respected_exactly(ntsc_video):
    # 60 frames minus 10 skipped at the end leaves exactly 50.
    sampling = FrameSampling(num_frames=50, height=16, width=16, skip_frames_end=10)
    assert decode_video(ntsc_video, sampling).shape[0] == 50
    with pytest.raises(VideoTooShortError, match="only 49 of the 50"):
        decode_video(
            ntsc_video, FrameSampling(num_frames=50, height=16, width=16, skip_frames_start=1, skip_frames_end=10)
        )


def test_loop_policy_wraps_inside_the_usable_span(ntsc_video):
    reference = decode_video(ntsc_video, FrameSampling(num_frames=60, height=16, width=16))
    sampling = FrameSampling(
        num_frames=8, height=16, width=16, skip_frames_start=52, skip_frames_end=3, short_video="loop"
    )
    assert frame_numbers(decode_video(ntsc_video, sampling), reference) == [52, 53, 54, 55, 56, 52, 53, 54]


def test_everything_skipped_raises_even_with_loop(short_video):
    with pytest.raises(VideoTooShortError, match="only 0 of the 2"):
        decode_video(
            short_video, FrameSampling(num_frames=2, height=48, width=64, skip_frames_start=9, short_video="loop")
        )


def test_video_with_audio_decodes(audio_video):
    assert decode_video(audio_video, FrameSampling(num_frames=4, height=48, width=64)).shape == (4, 3, 48, 64)


@pytest.mark.parametrize(
    "fixture, reason",
    [
        ("audio_only_video", "no video stream"),
        ("zero_byte_video", "empty"),
        ("truncated_video", "moov atom not found"),
        ("garbage_video", ""),
    ],
)
def test_broken_files_raise_video_decode_error(request, fixture, reason):
    path = request.getfixturevalue(fixture)
    with pytest.raises(VideoDecodeError) as caught:
        decode_video(path, FrameSampling(num_frames=2, height=32, width=32))
    assert type(caught.value) is VideoDecodeError
    assert str(caught.value).startswith(f"{path}: ")
    assert reason in caught.value.reason


def test_a_video_whose_audio_runs_longer_is_called_short_not_damaged(tmp_path):
    from tests.data.conftest import H264, encode

    video = encode(tmp_path / "long_audio.mp4", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=8:duration=1",
                   "-f", "lavfi", "-i", "sine=frequency=440:duration=4", *H264, "-c:a", "aac")
    assert probe_video(video).duration > 3  # ffmpeg's header gives the audio's length
    with pytest.raises(VideoTooShortError) as raised:
        decode_video(video, FrameSampling(num_frames=9, height=48, width=64))
    # The audio's packets reach the header's 4 s: the file is whole, the video short.
    assert "truncated or damaged" not in raised.value.reason and "re-download" not in raised.value.reason
    assert "ask for fewer --max_num_frames" in raised.value.reason


def test_a_file_cut_short_is_called_damaged_not_short(truncated_faststart_video, caplog):
    # Its header promises 48 frames: advice to loop or pad a short video would train on a damaged file.
    sampling = FrameSampling(num_frames=45, height=48, width=64)
    with pytest.raises(VideoTooShortError, match="header says 2.00 s .* truncated or damaged; re-encode"):
        decode_video(truncated_faststart_video, sampling)
    decode_video(truncated_faststart_video, FrameSampling(num_frames=45, height=48, width=64, short_video="pad"))
    assert "truncated or damaged" in caplog.text


def test_spread_sampling_of_a_file_cut_short_spreads_over_what_decodes_and_says_so(truncated_mkv_video, mkv_video,
                                                                                 caplog):
    # The header says 2 s (48 frames); the packets stop at about 0.7 s (17 frames). Spread over what is there,
    # the clip is sound, but it covers a third of what the caption describes.
    sampling = FrameSampling(num_frames=5, height=32, width=32, spread=True)
    clip = decode_clip(truncated_mkv_video, sampling)
    reference = decode_video(truncated_mkv_video, FrameSampling(num_frames=17, height=32, width=32))
    assert torch.equal(clip.frames, reference[[0, 4, 8, 12, 16]])
    assert clip.cut_short.header_s == 2.0 and 0.5 < clip.cut_short.reached_s < 0.8
    decode_video(truncated_mkv_video, sampling)
    assert "header says 2.00 s but its streams end at 0.7" in caplog.text and "spread over the 0.7" in caplog.text
    assert decode_clip(mkv_video, sampling).cut_short is None
    # A clip that fits before the cut is what the whole file gives: nothing to tell.
    assert decode_clip(truncated_mkv_video, FrameSampling(num_frames=9, height=32, width=32)).cut_short is None


def test_intact_stream_copied_clips_are_not_taken_for_cut_ones(tmp_path):
    from tests.data.conftest import H264, encode

    source = encode(tmp_path / "source.mp4", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=30:d=12", *H264, "-g", "30")
    clips = [encode(tmp_path / "trimmed.mp4", "-ss", "4.3", "-i", str(source), "-t", "3", "-c", "copy"),  # edit list
             encode(tmp_path / "offset.mkv", "-i", str(source), "-t", "4", "-c", "copy", "-output_ts_offset", "5")]
    encode(tmp_path / "segment_%02d.mkv", "-i", str(source), "-c", "copy", "-f", "segment", "-segment_time", "4")
    clips.append(tmp_path / "segment_01.mkv")  # its header's duration counts from zero, its packets from 4 s
    assert probe_video(clips[1]).start == 5.0
    for clip in clips:
        assert decode_clip(clip, FrameSampling(num_frames=9, height=16, width=16, spread=True)).cut_short is None
        with pytest.raises(VideoTooShortError) as short:
            decode_video(clip, FrameSampling(num_frames=200, height=16, width=16))
        assert "truncated or damaged" not in short.value.reason and "fewer --max_num_frames" in short.value.reason


@pytest.mark.parametrize("sampling", [FrameSampling(num_frames=30, height=32, width=32),
                                      FrameSampling(num_frames=30, height=32, width=32, fps=24)],
                         ids=["consecutive", "fps-by-timestamp"])
def test_a_matroska_file_cut_short_is_called_damaged_with_or_without_audio(sampling, truncated_mkv_video,
                                                                           truncated_audio_mkv_video):
    # Matroska states one rate, so fps sampling reads the timestamps, which end where the file does; and an audio
    # track that ends early too is no sign of a short video with long audio.
    for video in (truncated_mkv_video, truncated_audio_mkv_video):
        with pytest.raises(VideoTooShortError, match=r"header says 2.0\d s but its streams end at .* truncated or "
                                                     "damaged; re-encode or re-download it"):
            decode_video(video, sampling)
    padded = decode_clip(truncated_mkv_video, dataclasses.replace(sampling, short_video="pad"))
    assert padded.frames.shape[0] == 30 and padded.cut_short is not None


def test_missing_file_and_folder_raise_video_decode_error(tmp_path):
    with pytest.raises(VideoDecodeError, match="not found"):
        decode_video(tmp_path / "absent.mp4", FrameSampling(num_frames=1, height=8, width=8))
    with pytest.raises(VideoDecodeError, match="not a regular file"):
        probe_video(tmp_path)


def test_a_video_this_process_may_not_read_stops_the_work_instead_of_being_skipped(landscape_video):
    # Root reads any file: run the reader as an unprivileged user (setpriv), in a folder it can enter.
    folder = Path(tempfile.mkdtemp(prefix="blueberry-unreadable-"))
    try:
        folder.chmod(0o755)
        video = folder / "clip.mp4"
        shutil.copy(landscape_video, video)
        video.chmod(0o600)
        as_another_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        if as_another_user and not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: every file is readable")
        code = ("from blueberry_video.data.decode import FrameSampling, VideoNotReadableError, decode_video\n"
                f"try: decode_video({str(video)!r}, FrameSampling(num_frames=2, height=32, width=32))\n"
                "except VideoNotReadableError as error: print('refused:', error)\n")
        result = subprocess.run([*as_another_user, sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd="/", timeout=120)
        assert f"refused: {video}: permission denied reading it; check the file's permissions" in result.stdout, \
            result.stderr
    finally:
        shutil.rmtree(folder)


def test_a_header_not_read_in_time_stops_the_work_instead_of_skipping_the_video(landscape_video, monkeypatch):
    monkeypatch.setattr(decode, "PROBE_TIMEOUT_S", 0.001)  # the real ffmpeg, given no time: as a stalled mount
    with pytest.raises(decode.VideoReadTimeoutError, match=r"did not read its header within .* Rerun once it answers"):
        probe_video(landscape_video)
    assert not issubclass(decode.VideoReadTimeoutError, VideoDecodeError)  # the cache skips only those


@pytest.mark.parametrize("broken", ["missing binary", "no binary at all"])
def test_an_ffmpeg_that_cannot_run_stops_the_work_with_the_fix(broken, landscape_video, monkeypatch, tmp_path):
    def no_binary():
        raise RuntimeError("No ffmpeg exe could be found")

    found = (lambda: str(tmp_path / "ffmpeg")) if broken == "missing binary" else no_binary
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", found)
    with pytest.raises(decode.FfmpegNotRunnableError, match="reinstall imageio-ffmpeg"):
        decode_video(landscape_video, FrameSampling(num_frames=2, height=32, width=32))


def test_random_crop_is_seeded_and_moves(landscape_video):
    # 320x240 covering 64x64 is 85x64: 22 possible horizontal offsets.
    center = FrameSampling(num_frames=1, height=64, width=64)
    random = FrameSampling(num_frames=1, height=64, width=64, crop="random")

    def crop(seed):
        return decode_video(landscape_video, random, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(crop(0), crop(0))
    centred = decode_video(landscape_video, center)
    assert any(not torch.equal(crop(seed), centred) for seed in range(3))


def test_decoding_stops_after_the_frames_it_needs(long_video, monkeypatch):
    calls = []
    real_read_frames = imageio_ffmpeg.read_frames

    def counting_read_frames(*args, **kwargs):
        call = {"frames": 0, "closed": False, "output_params": kwargs.get("output_params")}
        calls.append(call)
        try:
            for index, item in enumerate(real_read_frames(*args, **kwargs)):
                call["frames"] += index > 0  # the first item is the metadata
                yield item
        finally:
            call["closed"] = True

    monkeypatch.setattr(imageio_ffmpeg, "read_frames", counting_read_frames)
    clip = decode_video(long_video, FrameSampling(num_frames=5, height=48, width=64))
    assert clip.shape[0] == 5
    assert len(calls) == 1
    assert calls[0]["frames"] == 5 and calls[0]["closed"]
    params = calls[0]["output_params"]
    assert params[params.index("-frames:v") + 1] == "5"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_while_decoding_stops_the_work_instead_of_skipping_the_video(long_video, monkeypatch, signum):
    real_read_frames = imageio_ffmpeg.read_frames

    def read_frames_then_signal(*args, **kwargs):
        for index, item in enumerate(real_read_frames(*args, **kwargs)):
            if index == 2:  # the metadata and one frame in: Ctrl-C, or the scheduler's SIGTERM
                signal.raise_signal(signum)
            yield item

    monkeypatch.setattr(imageio_ffmpeg, "read_frames", read_frames_then_signal)
    with stop_with_message(lambda: "stopped"), pytest.raises(StoppedBySignal):
        decode_video(long_video, FrameSampling(num_frames=5, height=48, width=64))


def test_a_stop_that_imageio_wrapped_in_its_own_error_is_still_a_stop():
    try:
        try:
            raise StoppedBySignal("SIGINT: stopped", signal.SIGINT)
        except StoppedBySignal as stop:
            raise RuntimeError("Could not read frame 64:") from stop
    except RuntimeError as wrapped:
        with pytest.raises(StoppedBySignal):
            decode._raise_a_stop_within(wrapped)
    decode._raise_a_stop_within(RuntimeError("ffmpeg: Invalid data found when processing input"))  # no stop


def test_select_expression_merges_consecutive_runs():
    assert decode._select_expression([3, 4, 5, 9, 11, 12]) == "between(n,3,5)+eq(n,9)+between(n,11,12)"


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_frames": 0},
        {"height": -4},
        {"width": 2.5},
        {"fps": 0},
        {"fps": float("nan")},
        {"skip_frames_start": -1},
        {"skip_frames_end": 1.0},
        {"crop": "left"},
        {"short_video": "repeat"},
        {"spread": 1},
        {"spread": True, "fps": 8},
    ],
)
def test_frame_sampling_rejects_bad_settings(overrides):
    settings = {"num_frames": 4, "height": 32, "width": 32, **overrides}
    field = next(iter(overrides))
    with pytest.raises(ValueError, match=f"FrameSampling.{field}"):
        FrameSampling(**settings)


def test_decode_errors_survive_pickling_and_one_argument_rebuild(tmp_path):
    error = VideoTooShortError(tmp_path / "a.mp4", "only 3 of the 8 frames")
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is VideoTooShortError
    assert (restored.path, restored.reason, str(restored)) == (error.path, error.reason, str(error))
    # torch's DataLoader re-raises worker errors as type(error)(message).
    assert str(VideoDecodeError(str(error))) == str(error)


def test_probe_tells_a_variable_frame_rate_from_a_constant_one(tmp_path, landscape_video, ntsc_video):
    from tests.data.conftest import H264, encode

    uneven = encode(tmp_path / "uneven.mp4", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=16", "-frames:v", "24",
                    "-vf", "setpts='if(lt(N,12),N/16/TB,(12/16+(N-12)/8)/TB)'", "-fps_mode", "vfr", *H264)
    assert probe_video(uneven).rate_varies
    assert not probe_video(landscape_video).rate_varies and not probe_video(ntsc_video).rate_varies
