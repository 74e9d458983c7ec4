"""Videos as a prepare source: rows equal FFmpeg's fps filter, variable frame rate samples by time, ugly files
(rotation, pixel formats, odd sizes, audio, truncation, not a video), chunked resume, and labels that line up."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")

from helpers.videos import ffmpeg_fps_frames, noise_frames, set_mp4_rotation, write_video  # noqa: E402

from endovit.data import DataError, PrepareSettings, load_frames, prepare_frames  # noqa: E402
from endovit.data import prepare as prepare_module  # noqa: E402
from endovit.data.prepare import encode_rgb  # noqa: E402
from endovit.data.store import SHARDS_DIR  # noqa: E402
from endovit.data.synthetic import write_sample_frames  # noqa: E402

LOSSLESS = PrepareSettings(short_side=0, image_format="png", shard_size=4)


def rows(out: Path) -> tuple[list[np.ndarray], dict]:
    data = load_frames(out)
    pixels = [np.asarray(Image.open(io.BytesIO(item["bytes"])).convert("RGB")) for item in data["image"]]
    return pixels, data.select_columns(["video", "frame_index", "time"]).to_dict()


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("count, fps", [(60, 1), (51, 1), (60, 2.5), (30, 0)])
def test_rows_equal_ffmpegs_fps_filter_frame_for_frame(tmp_path, count, fps):
    video = write_video(tmp_path / "in" / "videos" / "video01.mp4", noise_frames(count))
    out = prepare_frames(tmp_path / "in", tmp_path / "out", PrepareSettings(**{**LOSSLESS.__dict__, "fps": fps}),
                         progress=False, log=lambda _: None).path
    pixels, meta = rows(out)
    assert same(pixels, ffmpeg_fps_frames(video, fps)), "the rows are what ffmpeg -vf fps=FPS:round=up extracts"
    step = 25 / fps if fps else 1
    assert meta["frame_index"] == [round(i * step) for i in range(len(pixels))]
    assert meta["time"] == pytest.approx([i * step / 25 for i in range(len(pixels))])
    assert set(meta["video"]) == {"video01"}


def test_resized_jpeg_rows_are_the_frames_resize_of_ffmpegs_frames(tmp_path):
    video = write_video(tmp_path / "clip.mp4", noise_frames(50, height=40, width=72))
    settings = PrepareSettings(short_side=24, quality=90)
    out = prepare_frames(video, tmp_path / "out", settings, progress=False, log=lambda _: None).path
    stored = [item["bytes"] for item in load_frames(out)["image"]]
    expected = [encode_rgb(Image.fromarray(f), settings) for f in ffmpeg_fps_frames(video, 1)]
    assert stored == expected, "same resize and JPEG encode as frame files get"


def test_variable_frame_rate_samples_the_frame_on_screen_at_each_second(tmp_path):
    frames = noise_frames(8)
    times = [0, 100, 900, 1000, 1500, 2600, 2700, 3900]
    video = write_video(tmp_path / "in" / "vfr.mkv", frames, times_ms=times)
    out = prepare_frames(tmp_path / "in", tmp_path / "out", LOSSLESS, progress=False, log=lambda _: None).path
    pixels, meta = rows(out)
    assert meta["time"] == pytest.approx([0.0, 1.0, 1.5, 2.7]), "on screen at 0, 1, 2 and 3 s"
    assert same(pixels, ffmpeg_fps_frames(video, 1))
    again = prepare_frames(tmp_path / "in", tmp_path / "again", LOSSLESS, progress=False, log=lambda _: None).path
    assert same(rows(again)[0], pixels), "deterministic"


def test_rotation_pixel_formats_odd_sizes_and_audio_decode_faithfully(tmp_path):
    source = noise_frames(25, height=48, width=64, seed=3)
    rotated = write_video(tmp_path / "in" / "phone.mp4", source)
    set_mp4_rotation(rotated, 90)
    odd = [f[:47, :63] for f in source]
    write_video(tmp_path / "in" / "deep" / "ten_bit.mkv", odd, codec="ffv1", pix_fmt="yuv444p10le", options={})
    write_video(tmp_path / "in" / "deep" / "four22.mkv", source, codec="ffv1", pix_fmt="yuv422p", options={})
    write_video(tmp_path / "in" / "with_audio.mp4", source, audio=True)
    out = prepare_frames(tmp_path / "in", tmp_path / "out", PrepareSettings(**{**LOSSLESS.__dict__, "fps": 0}),
                         progress=False, log=lambda _: None).path
    data = load_frames(out)
    pixels = {}
    for item, video in zip(data["image"], data["video"], strict=True):
        pixels.setdefault(video, []).append(np.asarray(Image.open(io.BytesIO(item["bytes"]))))
    assert sorted(pixels) == ["four22", "phone", "ten_bit", "with_audio"]
    assert all(len(v) == 25 for v in pixels.values()), "audio stream ignored, every video frame kept"
    upright = ffmpeg_fps_frames(rotated, 0, "transpose=clock")  # ffmpeg's autorotate for a 90-degree matrix
    assert pixels["phone"][0].shape == (64, 48, 3) and same(pixels["phone"], upright)
    assert np.array_equal(pixels["phone"][0], np.rot90(pixels["with_audio"][0], k=-1)), "turned clockwise"
    assert pixels["ten_bit"][0].shape == (47, 63, 3)
    for name, reference in (("ten_bit", odd), ("four22", source)):
        error = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(pixels[name], reference, strict=True)])
        assert error < 6, f"{name} decodes to its source colours (mean error {error:.1f})"


def test_truncated_and_non_video_files_are_counted_and_the_rest_kept(tmp_path):
    whole = write_video(tmp_path / "in" / "whole.mkv", noise_frames(150), codec="ffv1", options={})
    cut = tmp_path / "in" / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (tmp_path / "in" / "notes.mp4").write_text("not a video")
    (tmp_path / "in" / "readme.txt").write_text("ignored")
    lines = []
    result = prepare_frames(tmp_path / "in", tmp_path / "out", PrepareSettings(shard_size=2), progress=False,
                            log=lines.append)
    manifest = result.manifest
    assert manifest["videos"]["whole"] == 6 and 1 <= manifest["videos"]["cut"] < 6, "decodable frames are kept"
    assert {e["path"] for e in manifest["video_errors"]} == {str(cut)}
    assert [n["path"] for n in manifest["not_videos"]] == [str(tmp_path / "in" / "notes.mp4")]
    assert "1 damaged (decodable frames kept), 1 non-video file skipped; 1 other file ignored" in lines[0]
    with pytest.raises(DataError, match=r"^damaged video .*cut\.mkv: .*pass --on_error skip"):
        prepare_frames(cut, tmp_path / "stop", PrepareSettings(on_error="stop"), progress=False)


def test_two_videos_of_one_name_or_one_video_as_frames_and_file_are_refused(tmp_path):
    # rows are named by a video file's stem and a frame's folder: a clash would merge two videos into one name
    archive = tmp_path / "archive"
    for year in ("2023", "2024"):
        write_video(archive / year / "case1.mp4", noise_frames(25))
    with pytest.raises(DataError, match=rf"^{archive}/2023/case1.mp4 and {archive}/2024/case1.mp4 would both be "
                                        r"video 'case1' .*: rename one, or prepare their folders as separate"):
        prepare_frames(archive, tmp_path / "out", PrepareSettings(), progress=False)
    release = tmp_path / "cholec80"
    write_video(release / "videos" / "video05.mp4", noise_frames(25))
    write_sample_frames(release, videos=1, frames=2, height=32, width=48, first_video=5)  # frames/video05/
    with pytest.raises(DataError, match=rf"^video 'video05' is under {release} twice, as frames \({release}/frames/"
                                        rf"video05\) and as a video file \({release}/videos/video05.mp4\): give "
                                        rf"--input {release}/frames or --input {release}/videos$"):
        prepare_frames(release, tmp_path / "out", PrepareSettings(), progress=False)
    assert not (tmp_path / "out").exists()
    assert prepare_frames(release / "videos", tmp_path / "out", PrepareSettings(), progress=False).frames == 1


def test_a_killed_video_prepare_resumes_by_chunk_and_ends_byte_identical(tmp_path, monkeypatch):
    write_video(tmp_path / "in" / "video01.mp4", noise_frames(200))
    write_video(tmp_path / "in" / "video02.mp4", noise_frames(100, seed=1))
    settings = PrepareSettings(shard_size=2)
    whole = prepare_frames(tmp_path / "in", tmp_path / "whole", settings, progress=False, log=lambda _: None)
    assert len(whole.manifest["shards"]) == 6, "8 s and 4 s at 1 fps, two ticks per shard: chunks of a video"

    real, calls = prepare_module._write_shard, []

    def killed_after_two(job):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(job.index)
        return real(job)

    monkeypatch.setattr(prepare_module, "_write_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare_frames(tmp_path / "in", tmp_path / "resumed", settings, progress=False)
    monkeypatch.setattr(prepare_module, "_write_shard", real)
    resumed = prepare_frames(tmp_path / "in", tmp_path / "resumed", settings, progress=False, log=lambda _: None)
    assert (resumed.written_shards, resumed.reused_shards) == (4, 2), "only the unfinished chunks are redone"
    for name in sorted(p.name for p in (tmp_path / "whole" / SHARDS_DIR).iterdir()):
        assert (tmp_path / "whole" / SHARDS_DIR / name).read_bytes() == (
            tmp_path / "resumed" / SHARDS_DIR / name).read_bytes(), name
    strip = lambda m: {k: v for k, v in m.items() if k != "id"}  # noqa: E731
    assert strip(whole.manifest) == strip(json.loads((tmp_path / "resumed" / "endovit_dataset.json").read_text()))


def _phase_videos(root: Path, shift_seconds: int = 0) -> None:
    """Cholec80 as downloaded: videos/videoNN.mp4 at 25 fps whose colour is their phase (a random phase each
    second) and phase_annotations/videoNN-phase.txt, one row per video frame (shifted: misaligned labels)."""
    from endovit.data.cholec80 import PHASES

    colours = np.random.default_rng(7).integers(0, 256, (len(PHASES), 3))
    for video in range(1, 7):
        rng = np.random.default_rng(video)
        phases = rng.integers(0, len(PHASES), 10)
        frames = [np.clip(colours[phases[k // 25]] + rng.normal(0, 6, (32, 32, 3)), 0, 255).astype(np.uint8)
                  for k in range(250)]
        write_video(root / "videos" / f"video{video:02d}.mp4", frames, options={"crf": "10", "g": "25"})
        rows = [f"{k}\t{PHASES[phases[min(k // 25 + shift_seconds, 9)]]}" for k in range(250)]
        (root / "phase_annotations").mkdir(exist_ok=True)
        (root / "phase_annotations" / f"video{video:02d}-phase.txt").write_text("\n".join(["Frame\tPhase", *rows]))


@pytest.mark.parametrize("shift, accurate", [(0, True), (1, False)])
def test_labels_from_cholec80s_own_files_line_up_with_video_rows_without_numbering_flags(tmp_path, shift, accurate):
    import torch
    from accelerate import Accelerator

    from endovit.models.mae import create_mae
    from endovit.probes import ProbeSettings, build_probe

    _phase_videos(tmp_path / "cholec80", shift)
    prepare_frames(tmp_path / "cholec80", tmp_path / "prepared", PrepareSettings(short_side=32), progress=False,
                   log=lambda _: None)
    settings = ProbeSettings(data=str(tmp_path / "prepared"), labels=str(tmp_path / "cholec80"), k=5,
                             train_videos=[f"video0{i}" for i in range(1, 5)], test_videos=["video05", "video06"])
    probe = build_probe(settings, img_size=(32, 32), mean=[0.5] * 3, std=[0.25] * 3, accelerator=Accelerator(cpu=True))
    assert len(probe.data.frames) == 60, "6 videos x 10 s at 1 fps"
    torch.manual_seed(0)
    accuracy = probe.evaluate(create_mae("mae_vit_tiny_patch16", img_size=32, depth=2))["probe/knn_cls_acc"]
    assert accuracy >= 0.95 if accurate else accuracy <= 0.45, accuracy


def test_synthetic_surgery_videos_come_as_cholec80_is_downloaded(tmp_path):
    import av

    from endovit.data.synthetic_video import write_sample_videos
    from endovit.probes.labels import cholec80_labels

    (video,) = write_sample_videos(tmp_path / "cholec80", videos=1, seconds=3, height=48, width=64)
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert (stream.average_rate, stream.frames) == (25, 75)
    prepare_frames(tmp_path / "cholec80", tmp_path / "prepared", PrepareSettings(), progress=False, log=lambda _: None)
    frames = load_frames(tmp_path / "prepared")
    assert frames["frame_index"] == [0, 25, 50]
    tools = cholec80_labels(frames, tmp_path / "cholec80", "tool")  # every 25th frame has a row: no flags needed
    assert tools.values.shape == (3, 7)
