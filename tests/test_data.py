"""Frames through `datasets`: every input form, clear errors, EndoViT's transforms reproduced exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from endovit.data import DataError, EvalTransform, TrainTransform, build_train_loader, load_frames, normalize
from endovit.data.frames import decode_image
from endovit.data.loader import TrainFrames
from endovit.data.synthetic import synth_frame


def test_image_folder_in_cholec80_layout(frames_dir):
    frames = load_frames(frames_dir)
    assert len(frames) == 16
    assert sorted(set(frames["video"])) == ["video01", "video02"]
    assert frames["frame_index"][:3] == [0, 1, 2]
    image = decode_image(frames[0]["image"])
    assert image.size == (64, 48) and image.mode == "RGB"


def test_saved_dataset_and_parquet_load_the_same_frames(frames_dir, tmp_path):
    frames = load_frames(frames_dir)
    embedded = frames.cast_column("image", __import__("datasets").Image())
    embedded.save_to_disk(str(tmp_path / "saved"))
    embedded.to_parquet(str(tmp_path / "shards" / "part-0.parquet"))
    for path in (tmp_path / "saved", tmp_path / "shards"):
        loaded = load_frames(path)
        assert len(loaded) == 16
        first = np.asarray(decode_image(loaded[0]["image"]))
        assert np.array_equal(first, np.asarray(decode_image(frames[0]["image"])))


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=f"data path {tmp_path / 'nope'} does not exist"):
        load_frames(tmp_path / "nope")
    (tmp_path / "empty" / "video01").mkdir(parents=True)
    (tmp_path / "empty" / "video01" / "notes.txt").write_text("no frames here")
    with pytest.raises(DataError, match="no image files .* found under"):
        load_frames(tmp_path / "empty")


def test_corrupt_frame_error_names_the_file(tmp_path):
    good = tmp_path / "video01" / "video01_000000.png"
    good.parent.mkdir()
    Image.fromarray(synth_frame(0, 48, 64)).save(good)
    truncated = tmp_path / "video01" / "video01_000001.png"
    truncated.write_bytes(good.read_bytes()[:200])
    frames = load_frames(tmp_path)
    decode_image(frames[0]["image"])
    with pytest.raises(DataError, match=f"cannot decode frame {truncated}"):
        decode_image(frames[1]["image"])


def test_crop_sampling_equals_torchvision_random_resized_crop():
    image = Image.fromarray(synth_frame(1, 480, 854))
    for seed in range(20):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(image, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3))
        ours = TrainTransform((224, 224), (0.6, 1.0)).crop_box(480, 854, torch.Generator().manual_seed(seed))
        assert ours == expected


def test_train_and_eval_pixels_equal_endovit_torchvision_pipeline():
    image = Image.fromarray(synth_frame(2, 96, 160))
    mean, std = [0.3464, 0.2280, 0.2228], [0.2520, 0.2128, 0.2093]
    reference_eval = T.Compose([T.Resize([64, 64], interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                                T.Normalize(mean, std)])
    ours = normalize(EvalTransform((64, 64))(image)[None], mean, std)[0]
    torch.testing.assert_close(ours, reference_eval(image), rtol=0, atol=1e-6)

    generator_seed = 5
    transform = TrainTransform((64, 64), (0.6, 1.0))
    top, left, h, w = transform.crop_box(96, 160, torch.Generator().manual_seed(generator_seed))
    expected = T.functional.resized_crop(image, top, left, h, w, [64, 64], T.InterpolationMode.BICUBIC)
    generator = torch.Generator().manual_seed(generator_seed)
    transform.crop_box(96, 160, generator)
    flip = torch.rand(1, generator=generator).item() < 0.5
    expected = T.functional.hflip(expected) if flip else expected
    ours = transform(image, torch.Generator().manual_seed(generator_seed))
    assert torch.equal(ours, T.functional.pil_to_tensor(expected))


def test_augmentation_depends_only_on_seed_epoch_and_index(frames_dir):
    frames = load_frames(frames_dir)
    dataset = TrainFrames(frames, TrainTransform((32, 32), (0.6, 1.0)), seed=7)
    a = dataset[(0, 3, 0)]["pixels"]
    torch.manual_seed(123)
    assert torch.equal(a, dataset[(0, 3, 0)]["pixels"])
    assert not torch.equal(a, dataset[(1, 3, 0)]["pixels"])
    assert not torch.equal(a, dataset[(0, 3, 1)]["pixels"])
    assert not torch.equal(a, TrainFrames(frames, TrainTransform((32, 32), (0.6, 1.0)), seed=8)[(0, 3, 0)]["pixels"])


def test_train_loader_order_is_a_fixed_permutation_per_epoch(frames_dir):
    loader = build_train_loader(load_frames(frames_dir), img_size=[32, 32], crop_scale=[0.6, 1.0],
                                batch_size=4, seed=1, num_workers=0)

    def epoch_indices(epoch):
        loader.sampler.set_epoch(epoch)
        return [i for batch in loader for i in batch["index"].tolist()]

    first = epoch_indices(0)
    assert sorted(first) == list(range(16)) and first != list(range(16))
    assert epoch_indices(0) == first and epoch_indices(1) != first
    batch = next(iter(loader))
    assert batch["pixels"].dtype == torch.uint8 and batch["pixels"].shape == (4, 3, 32, 32)


def test_without_reshuffling_every_epoch_has_epoch_0s_order_and_new_crops(frames_dir):
    """EndoViT's sampler never gets set_epoch: one order for the whole run (reshuffle_each_epoch false)."""
    loader = build_train_loader(load_frames(frames_dir), img_size=[32, 32], crop_scale=[0.6, 1.0], batch_size=4,
                                seed=1, num_workers=0, reshuffle=False)
    epochs = []
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        epochs.append([(i, pixels) for batch in loader
                       for i, pixels in zip(batch["index"].tolist(), batch["pixels"], strict=True)])
    orders = [[i for i, _ in epoch] for epoch in epochs]
    assert orders[0] == orders[1] == orders[2] and sorted(orders[0]) == list(range(16))
    assert not torch.equal(epochs[0][0][1], epochs[1][0][1])  # the same frame first, cropped anew
