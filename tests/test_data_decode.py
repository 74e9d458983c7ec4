"""One decode for every image PIL opens: each mode and EXIF orientation against the same frame stored as plain
8-bit RGB, directly and through the training path (TrainFrames over folders and prepared shards)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from endovit.data import DataError, PrepareSettings, TrainTransform, load_frames, prepare_frames
from endovit.data.frames import DEFAULT_MAX_PIXELS, FrameError, decode_image
from endovit.data.loader import TrainFrames

H, W = 12, 20
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
GREY = np.arange(H * W, dtype=np.uint16).reshape(H, W) % 256  # every 8-bit level appears
GREY[0, :4] = (0, 1, 254, 255)
MASK = np.zeros((H, W), bool)
MASK[3:7, 5:15] = True  # transparent where True


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def palette_frame() -> tuple[Image.Image, np.ndarray]:
    """A P-mode frame with 16 colours (so the palette is exact) and the same frame as RGB."""
    colours = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    index = RNG.integers(0, 16, (H, W), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(colours.flatten().tolist())
    return image, colours[index]


def cases() -> dict[str, tuple[bytes, np.ndarray]]:
    """mode name -> (encoded file, the same frame as plain 8-bit RGB pixels after decoding)."""
    sixteen = GREY.astype(np.uint32) * 257
    binary = (GREY > 127)
    palette, palette_rgb = palette_frame()
    transparent = palette.copy()
    transparent.info["transparency"] = int(np.asarray(palette)[MASK][0])
    transparent_rgb = np.where((np.asarray(palette) == transparent.info["transparency"])[..., None], 0, palette_rgb)
    alpha = np.where(MASK, 0, 255).astype(np.uint8)
    return {
        "RGB": (encode(Image.fromarray(RGB), "PNG"), RGB),
        "1": (encode(Image.fromarray(binary), "PNG"), grey_rgb(binary * 255)),
        "L": (encode(Image.fromarray(GREY.astype(np.uint8)), "PNG"), grey_rgb(GREY)),
        "I;16": (encode(Image.fromarray(sixteen.astype(np.uint16)), "PNG"), grey_rgb(GREY)),
        "I;16B": (encode(Image.frombytes("I;16B", (W, H), sixteen.astype(">u2").tobytes()), "TIFF"),
                  grey_rgb(GREY)),
        "I": (encode(Image.fromarray(sixteen.astype(np.int32)), "TIFF"), grey_rgb(GREY)),
        "P": (encode(palette, "PNG"), palette_rgb),
        "P+transparency": (encode(transparent, "PNG", transparency=transparent.info["transparency"]),
                           transparent_rgb),
        "LA": (encode(Image.fromarray(np.dstack([GREY.astype(np.uint8), alpha]), "LA"), "PNG"),
               np.where(MASK[..., None], 0, grey_rgb(GREY))),
        "RGBA": (encode(Image.fromarray(np.dstack([RGB, alpha]), "RGBA"), "PNG"), np.where(MASK[..., None], 0, RGB)),
        "CMYK": (encode(Image.fromarray(RGB).convert("CMYK"), "TIFF"), RGB),
    }


def test_the_cases_really_use_the_modes_they_name():
    for name, (data, _) in cases().items():
        with Image.open(io.BytesIO(data)) as image:
            assert image.mode == name.split("+")[0], name


@pytest.mark.parametrize("name", list(cases()))
def test_every_mode_decodes_like_the_same_frame_in_8_bit_rgb(name):
    data, expected = cases()[name]
    image = decode_image({"bytes": data, "path": f"frame-{name}.png"})
    assert image.mode == "RGB" and image.size == (W, H)
    assert np.array_equal(np.asarray(image), expected)


def test_sixteen_bit_levels_scale_instead_of_clipping():
    levels = np.arange(256, dtype=np.uint32)
    for fmt, mode in (("PNG", "I;16"), ("TIFF", "I;16B")):
        raw = (levels * 257).astype("<u2" if mode == "I;16" else ">u2").reshape(16, 16)
        data = encode(Image.frombytes(mode, (16, 16), raw.tobytes()), fmt)
        decoded = np.asarray(decode_image({"bytes": data, "path": "x"}))
        assert np.array_equal(decoded[..., 0].flatten(), levels.astype(np.uint8)), mode
    dark = (np.full((4, 4), 36) * 257).astype(np.uint16)  # a dark frame stays dark (convert("RGB") made it white)
    assert np.asarray(decode_image({"bytes": encode(Image.fromarray(dark), "PNG"), "path": "x"})).max() == 36


def test_partial_alpha_is_composited_on_black():
    alpha = np.full((H, W), 128, np.uint8)
    data = encode(Image.fromarray(np.dstack([RGB, alpha]), "RGBA"), "PNG")
    decoded = np.asarray(decode_image({"bytes": data, "path": "x"})).astype(int)
    assert np.abs(decoded - RGB.astype(int) * 128 / 255).max() <= 1


def test_ycbcr_decodes_to_the_rgb_frame_up_to_conversion_rounding():
    data = encode(Image.fromarray(RGB).convert("YCbCr"), "TIFF")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "YCbCr"
    decoded = np.asarray(decode_image({"bytes": data, "path": "x"})).astype(int)
    assert np.abs(decoded - RGB.astype(int)).max() <= 3


# Stored image = the upright frame turned by the inverse of what EXIF orientation n asks for.
INVERSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_270}


def exif_frame(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(RGB).transpose(INVERSE[orientation]), "PNG", exif=exif.tobytes())


@pytest.mark.parametrize("orientation", sorted(INVERSE))
def test_exif_orientation_is_applied(orientation):
    decoded = decode_image({"bytes": exif_frame(orientation), "path": "x"})
    assert np.array_equal(np.asarray(decoded), RGB)


def test_fast_jpeg_draft_path_is_unchanged_for_rgb_jpegs():
    data = encode(Image.fromarray(np.kron(RGB, np.ones((32, 32, 1), np.uint8))), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as reference:
        reference.draft("RGB", (W * 8, H * 8))
        expected = np.asarray(reference.convert("RGB"))
    decoded = decode_image({"bytes": data, "path": "x"}, lambda w, h: (w // 4, h // 4))
    assert decoded.size == (W * 8, H * 8) and np.array_equal(np.asarray(decoded), expected)


def write_case_folders(root: Path) -> tuple[Path, Path]:
    """The same frames twice: as every mode (and EXIF-turned), and as plain RGB PNGs."""
    modes, plain = root / "modes" / "video01", root / "plain" / "video01"
    modes.mkdir(parents=True)
    plain.mkdir(parents=True)
    frames = [*cases().values(), (exif_frame(6), RGB)]
    for i, (data, expected) in enumerate(frames):
        suffix = ".tiff" if data[:2] in (b"II", b"MM") else ".png"
        (modes / f"video01_{i:06d}{suffix}").write_bytes(data)
        Image.fromarray(expected).save(plain / f"video01_{i:06d}.png")
    return modes.parent, plain.parent


@pytest.mark.parametrize("image_format", ["folder", "keep", "png"])
def test_training_path_sees_every_mode_as_its_rgb_frame(tmp_path, image_format):
    modes, plain = write_case_folders(tmp_path)
    if image_format != "folder":
        settings = PrepareSettings(short_side=0, image_format=image_format)
        modes = prepare_frames(modes, tmp_path / "prep_modes", settings, progress=False).path
        plain = prepare_frames(plain, tmp_path / "prep_plain", settings, progress=False).path
    transform = TrainTransform((8, 8), (0.6, 1.0))
    keys = [(0, i, 0) for i in range(len(cases()) + 1)]
    ours = TrainFrames(load_frames(modes), transform, seed=1).__getitems__(keys)
    reference = TrainFrames(load_frames(plain), transform, seed=1).__getitems__(keys)
    for got, want in zip(ours, reference, strict=True):
        assert torch.equal(got["pixels"], want["pixels"]), got["index"]


def test_float_pixels_are_refused_with_the_file_name():
    data = encode(Image.fromarray(np.zeros((4, 4), np.float32)), "TIFF")
    with pytest.raises(FrameError, match="cannot decode frame depth.tiff: pixel mode F"):
        decode_image({"bytes": data, "path": "depth.tiff"})


def test_pixel_limit_is_one_clear_error_and_settable(monkeypatch):
    assert DEFAULT_MAX_PIXELS == 64_000_000
    data = encode(Image.fromarray(RGB), "PNG")
    with pytest.raises(DataError, match=r"cannot decode frame big.png: 20x12 is 0 megapixels, over the limit of "
                                        r"0.0002 MP; set ENDOVIT_MAX_PIXELS"):
        decode_image({"bytes": data, "path": "big.png"}, limit=200)
    monkeypatch.setenv("ENDOVIT_MAX_PIXELS", "200")
    with pytest.raises(DataError, match="over the limit"):
        decode_image({"bytes": data, "path": "big.png"})
    monkeypatch.setenv("ENDOVIT_MAX_PIXELS", "240")
    assert decode_image({"bytes": data, "path": "big.png"}).size == (W, H)
    monkeypatch.setenv("ENDOVIT_MAX_PIXELS", "lots")
    with pytest.raises(DataError, match="ENDOVIT_MAX_PIXELS='lots' is not a number"):
        decode_image({"bytes": data, "path": "big.png"})


def test_decompression_bomb_is_a_data_error_naming_the_file(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow refuses over twice this
    with pytest.raises(DataError, match="cannot decode frame bomb.png: .*decompression bomb.*MAX_IMAGE_PIXELS"):
        decode_image({"bytes": encode(Image.fromarray(RGB), "PNG"), "path": "bomb.png"})


def test_prepare_skips_or_stops_at_frames_over_the_limit(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    Image.fromarray(RGB).save(tmp_path / "in" / "big_000000.png")
    Image.fromarray(RGB[:8, :8]).save(tmp_path / "in" / "small_000001.png")
    monkeypatch.setenv("ENDOVIT_MAX_PIXELS", "100")
    result = prepare_frames(tmp_path / "in", tmp_path / "out", PrepareSettings(short_side=0), progress=False,
                            log=lambda _: None)
    assert result.frames == 1 and "over the limit of 0.0001 MP" in result.skipped[0]["error"]
    with pytest.raises(DataError, match="corrupt frame .*big_000000.png: 20x12 is 0 megapixels, over the limit"):
        prepare_frames(tmp_path / "in", tmp_path / "stop", PrepareSettings(on_error="stop"), progress=False)


def test_a_frame_error_survives_a_dataloader_worker(tmp_path):
    import pickle

    error = FrameError("a.png", "truncated")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.where, copy.reason) == (str(error), "a.png", "truncated")
    (tmp_path / "video01").mkdir()
    Image.fromarray(RGB).save(tmp_path / "video01" / "video01_000000.png")
    (tmp_path / "video01" / "video01_000001.png").write_bytes(b"not a png")
    loader = torch.utils.data.DataLoader(TrainFrames(load_frames(tmp_path), TrainTransform((8, 8)), seed=0),
                                         batch_size=2, sampler=[(0, 0, 0), (0, 1, 0)], num_workers=1)
    with pytest.raises(DataError, match=r"cannot decode frame .*video01_000001.png: not a PNG, JPEG, BMP, "
                                          r"TIFF, WEBP image"):
        next(iter(loader))
