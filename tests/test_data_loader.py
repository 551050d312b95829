"""The on-device loader: crop/flip, RandAugment and Mixup/CutMix checked against torchvision and timm's definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from bench.data import DeviceLoader, Normalizer, build_trial_data
from bench.data.augment import crop_flip
from bench.data.loader import take_rows
from bench.data.mix import mix_batch
from bench.data.randaugment import OPS, SIGNED, apply_choices, apply_op, draw_ops, op_magnitude, rand_augment

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_flip_equals_torchvisions_pad_crop_flip_image_by_image():
    x = images(16)
    out = crop_flip(x, 4, True, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # replay the draws: offsets y, offsets x, then flips
    dy = torch.randint(0, 9, (16,), generator=gen)
    dx = torch.randint(0, 9, (16,), generator=gen)
    mirrored = torch.rand(16, generator=gen) < 0.5
    assert 0 < mirrored.sum() < 16
    for i in range(16):
        expected = TF.crop(TF.pad(x[i], [4], fill=0), int(dy[i]), int(dx[i]), 32, 32)
        if mirrored[i]:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(out[i], expected)
    assert out.dtype == torch.uint8


def test_take_rows_is_plain_indexing():
    idx = torch.tensor([5, 0, 3, 3])
    for x in (images(8), images(8, size=5), torch.randn(8, 4, 3)):  # 8-byte rows, odd rows, float
        assert torch.equal(take_rows(x, idx), x[idx])


def encoded_dataset(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i + 1, and its label is i % 10: batches can be traced back."""
    x = (torch.arange(n, dtype=torch.uint8) + 1).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    return x, torch.arange(n) % 10


def pixels(batch: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: back to 0..255 pixel values."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((batch * std + mean) * 255).round()


def test_loader_serves_every_image_once_per_epoch_augmented_and_normalised():
    x, y = encoded_dataset()
    loader = DeviceLoader(x, y, 64, Normalizer(MEAN, STD, "cpu", image=True), ["crop", "flip"],
                          torch.Generator().manual_seed(0), num_classes=10)
    assert len(loader) == 4
    for _ in range(2):
        seen = []
        for xb, yb in loader:
            assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 32, 32) and yb.dtype == torch.long
            px = pixels(xb)
            ids = px[:, 0, 16, 16].long() - 1  # the centre is never padding (padding 4)
            assert torch.equal(yb, ids % 10)
            values = set(px.unique().tolist())
            assert values <= set(range(256))
            seen += ids.tolist()
        assert sorted(seen) == list(range(200))
    # the padding is black pixels (0), as in torchvision, not the normalised mean
    xb, _ = next(iter(loader))
    assert (pixels(xb) == 0).any()


def test_same_generator_state_replays_an_epoch_with_every_augmentation():
    x, y = images(96), torch.arange(96) % 10
    augment = ["crop", "flip", "randaugment", "mixup", "cutmix"]

    def make(gen):
        return DeviceLoader(x, y, 32, Normalizer(MEAN, STD, "cpu", image=True), augment, gen, num_classes=10)

    gen = torch.Generator().manual_seed(1)
    loader = make(gen)
    list(loader)  # epoch 1
    state = gen.get_state()
    epoch2 = list(loader)
    gen.set_state(state)  # what a resumed trial does at an epoch boundary
    replay = list(make(gen))
    for (a, ta), (b, tb) in zip(epoch2, replay):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert ta.shape == (32, 10)
    assert not torch.equal(epoch2[0][0], list(make(torch.Generator().manual_seed(2)))[0][0])


@pytest.mark.parametrize("op", [op for op in OPS if op != "Identity"])
def test_randaugment_ops_match_torchvisions_randaugment_image_by_image(op):
    from torchvision.transforms.v2 import InterpolationMode, RandAugment

    ref = RandAugment(num_ops=2, magnitude=9)
    x = images(6, seed=3)
    strength = op_magnitude(op, 9, 32, 32)
    for signed in ((strength, -strength) if op in SIGNED else (strength,)):
        batched = apply_op(x, op, signed)
        for i in range(len(x)):
            # torchvision's own dispatch (a private method: the public transform draws its op itself)
            expected = ref._apply_image_or_video_transform(x[i], op, signed, interpolation=InterpolationMode.NEAREST, fill=ref._fill)
            assert torch.equal(batched[i], expected), (op, signed, i)


def test_randaugment_magnitudes_are_torchvisions_at_m9():
    assert op_magnitude("Rotate", 9, 32, 32) == pytest.approx(9.0)
    assert op_magnitude("ShearX", 9, 32, 32) == pytest.approx(0.09)
    assert int(op_magnitude("TranslateX", 9, 32, 32)) == 4
    assert op_magnitude("Brightness", 9, 32, 32) == pytest.approx(0.27)
    assert op_magnitude("Posterize", 9, 32, 32) == 7
    assert op_magnitude("Solarize", 9, 32, 32) == pytest.approx(0.7)


def test_randaugment_applies_each_images_own_ops():
    x = images(64, seed=4)
    out = rand_augment(x, 2, 9, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    rounds = [draw_ops(64, rng) for _ in range(2)]
    for i in range(64):  # each image, alone, through its two drawn ops
        img = x[i : i + 1]
        for ops, negative in rounds:
            op = OPS[ops[i]]
            strength = op_magnitude(op, 9, 32, 32)
            img = apply_op(img, op, -strength if negative[i] and op in SIGNED else strength)
        assert torch.equal(out[i : i + 1], img), i
    assert len(set(rounds[0][0].tolist())) > 8  # images in one batch get different ops
    ops, negative = rounds[0]
    assert torch.equal(apply_choices(x, np.zeros(64, dtype=np.int64), negative, 9), x)  # Identity everywhere
    with pytest.raises(ValueError, match="uint8"):
        rand_augment(x.float(), 2, 9, np.random.default_rng(0))


def test_mixup_is_a_convex_mix_with_the_reversed_batch():
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    mixed, targets = mix_batch(x, y, 4, 1.0, None, np.random.default_rng(0))
    lam = targets[0, y[0]].item() if y[0] != y[-1] else None
    assert lam is not None and 0 < lam < 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    expected = lam * torch.eye(4)[y] + (1 - lam) * torch.eye(4)[y.flip(0)]
    assert torch.allclose(targets, expected, atol=1e-6)


def test_cutmix_pastes_a_box_whose_area_sets_lam():
    x = torch.zeros(6, 3, 32, 32) + torch.arange(6.0).view(6, 1, 1, 1)
    y = torch.arange(6)
    for seed in range(10):
        mixed, targets = mix_batch(x, y, 6, None, 0.8, np.random.default_rng(seed))
        pasted = (mixed[0] != x[0]).float().mean().item()  # image 0 gets image 5's pixels in the box
        assert targets[0, 0].item() == pytest.approx(1 - pasted, abs=1e-6)
        assert targets[0, 5].item() == pytest.approx(pasted, abs=1e-6)
        assert torch.equal(mixed[0][mixed[0] != x[0]].unique(), torch.tensor([5.0])) or pasted == 0


def test_with_both_on_each_batch_uses_one_of_them_about_half_the_time():
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    rng = np.random.default_rng(0)
    kinds = []
    for _ in range(200):
        mixed, _ = mix_batch(x, y, 4, 1.0, 0.8, rng)
        changed = (mixed != x).float().mean().item()
        kinds.append("cutmix" if changed < 0.999 else "mixup")  # mixup changes every pixel, cutmix a box
    assert 60 < kinds.count("cutmix") < 140


def test_mixed_targets_work_with_the_training_loss():
    from bench.train import classification_loss

    x, y = images(32), torch.arange(32) % 10
    loader = DeviceLoader(x, y, 16, Normalizer(MEAN, STD, "cpu", image=True), ["mixup", "cutmix"],
                          torch.Generator().manual_seed(0), num_classes=10)
    xb, targets = next(iter(loader))
    assert targets.shape == (16, 10) and torch.allclose(targets.sum(dim=1), torch.ones(16))
    logits = torch.randn(16, 10)
    loss = classification_loss(logits, targets, label_smoothing=0.1)
    assert torch.isfinite(loss)
    hard = torch.eye(10)[y[:16]]
    assert classification_loss(logits, hard, 0.1).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y[:16], label_smoothing=0.1).item(), rel=1e-5)


def test_loader_refuses_what_it_cannot_do():
    norm = Normalizer((0.0,), (1.0,), "cpu", image=False)
    patches, labels = torch.randn(10, 4, 6), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="image inputs"):
        DeviceLoader(patches, labels, 4, norm, ["cutmix"], num_classes=2)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(torch.randn(10, 3, 8, 8), labels, 4, norm, ["randaugment"], num_classes=2)
    with pytest.raises(ValueError, match="unknown augmentations"):
        DeviceLoader(images(4), labels[:4], 4, norm, ["rotate"])
    with pytest.raises(ValueError, match="num_classes"):
        DeviceLoader(images(4), labels[:4], 4, norm, ["mixup"])
    xb, yb = next(iter(DeviceLoader(patches, labels, 4, norm, ["mixup"], num_classes=2)))
    assert xb.shape == (4, 4, 6) and yb.shape == (4, 2)  # mixup works on patch vectors too


def test_real_dataset_stays_uint8_on_the_device_and_trains(tmp_path):
    from tests.test_data_sets import write_cifar10

    write_cifar10(tmp_path, per_batch=8, test=6)
    dataset = {"name": "cifar10", "root": str(tmp_path)}
    data = build_trial_data(dataset, 20, seed=0, device="cpu")
    assert data.train_x.dtype == torch.uint8 and data.test_x.dtype == torch.uint8 and data.n_train == 20
    assert data.normalize.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    loader = DeviceLoader(data.train_x, data.train_y, 8, data.normalize, ["crop", "flip", "randaugment", "mixup", "cutmix"],
                          torch.Generator().manual_seed(0), num_classes=data.num_classes)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [8, 8, 4] and batches[0][1].shape == (8, 10)


def test_a_trial_runs_the_paper_recipe_on_cifar_files(tmp_path):
    """train.run_trial end to end: stratified subset, uint8 on the device, the full CIFAR recipe, n_train recorded."""
    from bench.spec import parse_sweep
    from bench.train import run_trial
    from tests.test_data_sets import write_cifar10

    write_cifar10(tmp_path, per_batch=8, test=6)
    sweep = parse_sweep({
        "name": "recipe", "model": "resnet18", "model_args": {"width": 4}, "train_size": 0.5,
        "dataset": {"name": "cifar10", "root": str(tmp_path)},
        "train": {"epochs": 1, "batch_size": 8, "augment": ["crop", "flip", "randaugment", "mixup", "cutmix"],
                  "label_smoothing": 0.1},
    })
    result = run_trial(sweep.trials[0], device="cpu")
    assert result["n_train"] == 20 and result["epochs"] == 1
    assert np.isfinite(result["train_loss"]) and 0 <= result["test_acc"] <= 1


def test_block_shuffled_data_is_augmented_in_image_space_then_shuffled_again():
    """Crop offsets that are not multiples of the block, and flips, would change the tiles of
    shuffled images; the loader undoes the shuffle, augments, and shuffles again, so a
    shuffled batch is exactly the shuffle of the augmented natural batch."""
    from bench.data.shuffle import BlockShuffle, block_shuffle

    natural = images(24)
    shuffled = block_shuffle(natural, 8, seed=3)
    shuffle = BlockShuffle(8, 3, 32)
    assert torch.equal(shuffle.shuffle(natural), shuffled) and torch.equal(shuffle.unshuffle(shuffled), natural)
    norm = Normalizer(MEAN, STD, "cpu", image=True)
    augment = ["crop", "flip", "cutmix"]

    def batches(x, block_shuffle):
        gen = torch.Generator().manual_seed(11)
        loader = DeviceLoader(x, torch.arange(24) % 3, 8, norm, augment, gen, num_classes=3,
                              block_shuffle=block_shuffle)
        return list(loader)

    for (plain_x, plain_y), (shuf_x, shuf_y) in zip(batches(natural, None), batches(shuffled, shuffle)):
        assert torch.equal(shuf_x, shuffle.shuffle(plain_x)) and torch.equal(shuf_y, plain_y)
    # Without spatial augmentation there is nothing to undo: the stored shuffled pixels are served.
    loader = DeviceLoader(shuffled, torch.zeros(24, dtype=torch.long), 24, norm, [], None, shuffle=False,
                          block_shuffle=shuffle)
    assert loader.block_shuffle is None and torch.equal(next(iter(loader))[0], norm(shuffled))
