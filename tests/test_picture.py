"""The reconstruction picture on a known frame: every pixel of its four columns equals a hand-computed
denormalisation (x * std + mean, clamped, x 255, rounded) with a mean and std unlike EndoViT's, enlarged by a whole
factor under a header that names each column."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from endovit.data import load_frames
from endovit.data.transforms import denormalize, normalize
from endovit.models.mae import create_mae
from endovit.validation import PICTURE_COLUMNS, PICTURE_HEADER, picture_batch, reconstruction_grid

MEAN, STD = [0.6, 0.3, 0.1], [0.2, 0.25, 0.4]


@pytest.fixture(scope="module")
def known_frame(tmp_path_factory) -> tuple[np.ndarray, object]:
    """One 32x32 RGB frame (HWC uint8) with every channel different, saved as PNG and loaded as a dataset."""
    rows, cols = np.mgrid[0:32, 0:32]
    pixels = np.stack([rows * 8, cols * 8, (rows * 5 + cols * 3) % 256], axis=-1).astype(np.uint8)
    folder = tmp_path_factory.mktemp("known") / "video01"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "video01_000000.png")
    return pixels, load_frames(folder.parent)


def test_denormalize_is_x_times_std_plus_mean_clamped():
    images = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    by_hand = (images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).clamp(0, 1)
    torch.testing.assert_close(denormalize(images, MEAN, STD), by_hand, rtol=0, atol=1e-7)
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal((denormalize(normalize(pixels, MEAN, STD), MEAN, STD) * 255).round().to(torch.uint8), pixels)


def test_reconstruction_picture_pixels_equal_a_hand_computed_denormalisation(known_frame):
    pixels, frames = known_frame
    torch.manual_seed(0)
    mae = create_mae("mae_vit_tiny_patch16", img_size=(32, 32))
    images, noise = picture_batch(frames, count=1, img_size=[32, 32], mean=MEAN, std=STD, seed=5,
                                  num_patches=mae.num_patches,
                                  device=torch.device("cpu"))
    picture = reconstruction_grid(mae, images, noise, mean=MEAN, std=STD, mask_ratio=0.75)
    assert picture.dtype == np.uint8 and picture.shape == (PICTURE_HEADER + 32 * 6, 4 * 32 * 6, 3)  # 32 -> 192 px
    header, tiles = picture[:PICTURE_HEADER], picture[PICTURE_HEADER:]
    np.testing.assert_array_equal(tiles, tiles[::6, ::6].repeat(6, axis=0).repeat(6, axis=1))
    grid = tiles[::6, ::6]
    columns = [header[:, i * 192:(i + 1) * 192] for i in range(4)]
    assert len(PICTURE_COLUMNS) == 4 and all((column < 128).any() for column in columns)  # a dark name over each
    assert all((column[:, :8] == 255).all() and (column[:, -8:] == 255).all() for column in columns)  # centred
    original, masked, reconstruction, pasted = (grid[:, i * 32:(i + 1) * 32] for i in range(4))
    np.testing.assert_array_equal(original, pixels)  # the frame itself: normalised, then denormalised

    with torch.no_grad():
        _, pred, mask = mae.eval()(images, 0.75, noise)
    assert int(mask.sum()) == 3  # 4 patches of 16x16, 3 masked
    patch_mask = mask.view(2, 2).repeat_interleave(16, 0).repeat_interleave(16, 1).bool().numpy()
    mean, std = np.array(MEAN, dtype=np.float32), np.array(STD, dtype=np.float32)
    recon = mae.unpatchify(pred)[0].permute(1, 2, 0).numpy()
    recon_pixels = (np.clip(recon * std + mean, 0, 1) * 255).round().astype(np.uint8)
    grey = round(0.15 * 255)
    assert np.abs(reconstruction.astype(int) - recon_pixels).max() <= 1  # float rounding at .5 only
    np.testing.assert_array_equal(masked[~patch_mask], pixels[~patch_mask])
    assert (masked[patch_mask] == grey).all()
    np.testing.assert_array_equal(pasted[~patch_mask], pixels[~patch_mask])
    np.testing.assert_array_equal(pasted[patch_mask], reconstruction[patch_mask])
