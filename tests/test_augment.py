"""The training augmentation flips: about half the crops come out mirrored, exactly torchvision's hflip of the
unflipped crop (one seed, as tests/test_data.py checks, may never draw a flip)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from endovit.data.transforms import TrainTransform


def test_about_half_the_crops_are_mirrored_and_exactly_so():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    transform = TrainTransform((32, 32), (0.6, 1.0))
    mirrored = 0
    for seed in range(40):
        top, left, h, w = transform.crop_box(48, 80, torch.Generator().manual_seed(seed))
        crop = F.pil_to_tensor(F.resized_crop(image, top, left, h, w, [32, 32], InterpolationMode.BICUBIC))
        ours = transform(image, torch.Generator().manual_seed(seed))
        if torch.equal(ours, crop.flip(-1)):
            mirrored += 1
        else:
            assert torch.equal(ours, crop), seed
    assert 10 <= mirrored <= 30, mirrored
