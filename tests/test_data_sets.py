"""Real image datasets, read from tiny files written in the exact on-disk formats torchvision reads."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import check_available, dataset_hash_view, load_splits, parse_options, resolve_dataset
from bench.data.shuffle import block_permutation, block_shuffle
from bench.errors import BenchInputError, DataUnavailable


def write_cifar10(root: Path, per_batch: int = 6, test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision's cifar-10-batches-py/: five training batches, a test batch, batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        lab = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": lab, "data": data, "filenames": [f"{i}.png" for i in range(n)]}, f, protocol=2)
        rows.append(data)
        labels.append(lab)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return {"train": np.concatenate(rows[:5]), "train_y": np.concatenate(labels[:5]), "test": rows[5], "test_y": np.array(labels[5])}


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 4) -> dict[str, np.ndarray]:
    """torchvision's cifar-100-python/: train, test, meta (fine and coarse labels)."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": fine, "coarse_labels": [c // 5 for c in fine]}, f, protocol=2)
        out[name], out[name + "_y"] = data, np.array(fine)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return out


def write_svhn(root: Path, n_train: int = 9, n_test: int = 4) -> dict[str, np.ndarray]:
    """torchvision's SVHN files: <root>/{train,test}_32x32.mat with X (32, 32, 3, N) and y (N, 1), 10 for the digit 0."""
    import scipy.io

    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split], out[split + "_y"] = x, y
    return out


def test_cifar10_reads_torchvisions_layout(tmp_path):
    ref = write_cifar10(tmp_path)
    splits = load_splits({"name": "cifar10", "root": str(tmp_path)})
    assert splits.train_x.dtype == torch.uint8 and splits.train_x.shape == (30, 3, 32, 32)
    assert np.array_equal(splits.train_x.numpy().reshape(30, -1), ref["train"])  # rows are CHW, as stored
    assert splits.train_y.tolist() == ref["train_y"].tolist()
    assert np.array_equal(splits.test_x.numpy().reshape(5, -1), ref["test"]) and splits.test_y.tolist() == ref["test_y"].tolist()
    assert splits.num_classes == 10 and splits.meta["classes"][3] == "class3"
    assert splits.mean == pytest.approx((0.4914, 0.4822, 0.4465)) and splits.std == pytest.approx((0.2470, 0.2435, 0.2616))


def test_cifar_files_match_what_torchvision_itself_reads(tmp_path, monkeypatch):
    """torchvision's own reader, with only its MD5 check switched off, sees the same images and labels."""
    import torchvision.datasets as tvd

    write_cifar10(tmp_path)
    write_cifar100(tmp_path)
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda path, md5=None: True)
    for name, cls in (("cifar10", tvd.CIFAR10), ("cifar100", tvd.CIFAR100)):
        ours = load_splits({"name": name, "root": str(tmp_path)})
        for train, x, y in ((True, ours.train_x, ours.train_y), (False, ours.test_x, ours.test_y)):
            theirs = cls(str(tmp_path), train=train)
            assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), theirs.data)  # torchvision keeps HWC
            assert y.tolist() == list(theirs.targets)
        assert ours.meta["classes"] == theirs.classes


def test_cifar100_fine_labels(tmp_path):
    ref = write_cifar100(tmp_path)
    splits = load_splits({"name": "cifar100", "root": str(tmp_path)})
    assert splits.num_classes == 100 and splits.train_y.tolist() == ref["train_y"].tolist()
    assert np.array_equal(splits.train_x.numpy().reshape(12, -1), ref["train"])
    assert splits.meta["classes"][7] == "f7"
    assert splits.mean == pytest.approx((0.5071, 0.4865, 0.4409))


def test_cifar_batches_pickled_with_bytes_keys_are_read_too(tmp_path):
    ref = write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    with open(path, "wb") as f:
        pickle.dump({k.encode(): v for k, v in entry.items()}, f)
    splits = load_splits({"name": "cifar10", "root": str(tmp_path)})
    assert splits.train_y.tolist() == ref["train_y"].tolist()


def test_svhn_reads_torchvisions_layout_and_maps_10_to_0(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    ref = write_svhn(tmp_path)
    splits = load_splits({"name": "svhn", "root": str(tmp_path)})
    assert splits.train_x.dtype == torch.uint8 and splits.train_x.shape == (9, 3, 32, 32)
    # pixel (n, c, i, j) is X[i, j, c, n]
    assert np.array_equal(splits.train_x.numpy(), ref["train"].transpose(3, 2, 0, 1))
    expected = ref["train_y"].reshape(-1).astype(int) % 10
    assert splits.train_y.tolist() == expected.tolist() and splits.train_y[0] == 0
    assert splits.num_classes == 10 and splits.test_x.shape == (4, 3, 32, 32)
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    theirs = tvd.SVHN(str(tmp_path), split="train")
    assert np.array_equal(splits.train_x.numpy(), theirs.data) and splits.train_y.tolist() == theirs.labels.tolist()


def write_pngs(root: Path, layout: dict[str, dict[str, int]], size=(8, 6), seed: int = 0) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    written: dict[str, list[np.ndarray]] = {}
    for split, classes in layout.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(array).save(root / split / cls / f"{i:03d}.png")
                written.setdefault(f"{split}/{cls}", []).append(array)
    return written


def test_imagefolder_reads_users_pngs(tmp_path):
    written = write_pngs(tmp_path, {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 2}})
    splits = load_splits({"name": "imagefolder", "root": str(tmp_path)})
    assert splits.meta["classes"] == ["cat", "dog"] and splits.num_classes == 2
    assert splits.train_x.shape == (5, 3, 6, 8) and splits.train_x.dtype == torch.uint8
    assert splits.train_y.tolist() == [0, 0, 0, 1, 1] and splits.test_y.tolist() == [0, 1, 1]
    expected = np.stack(written["train/cat"] + written["train/dog"]).transpose(0, 3, 1, 2)
    assert np.array_equal(splits.train_x.numpy(), expected)  # PNG is lossless: the pixels as written
    pixels = expected.astype(np.float64) / 255
    assert splits.mean == pytest.approx(tuple(pixels.mean(axis=(0, 2, 3))), abs=1e-9)
    assert splits.std == pytest.approx(tuple(pixels.std(axis=(0, 2, 3))), abs=1e-9)


def test_imagefolder_sizes_resize_and_errors(tmp_path):
    write_pngs(tmp_path, {"train": {"a": 2}, "test": {"a": 1}}, size=(8, 8))
    write_pngs(tmp_path, {"train": {"b": 1}}, size=(10, 7), seed=1)
    with pytest.raises(BenchInputError, match="img_size"):
        load_splits({"name": "imagefolder", "root": str(tmp_path)})
    splits = load_splits({"name": "imagefolder", "root": str(tmp_path), "img_size": 5})
    assert splits.train_x.shape == (3, 3, 5, 5) and splits.test_x.shape == (1, 3, 5, 5)
    write_pngs(tmp_path, {"test": {"z": 1}})
    with pytest.raises(BenchInputError, match="classes that train/ lacks: z"):
        check_available({"name": "imagefolder", "root": str(tmp_path)})
    with pytest.raises(DataUnavailable, match=str(tmp_path / "nowhere" / "train")):
        check_available({"name": "imagefolder", "root": str(tmp_path / "nowhere")})
    with pytest.raises(BenchInputError, match="root"):
        parse_options({"name": "imagefolder"})


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("svhn", "train_32x32.mat"),
])
def test_missing_data_raises_data_unavailable_naming_the_path(tmp_path, name, expected):
    root = tmp_path / "data"
    with pytest.raises(DataUnavailable) as err:
        check_available({"name": name, "root": str(root)})
    message = str(err.value)
    assert str(root) in message and expected in message and "download: true" in message and "\n" not in message
    with pytest.raises(DataUnavailable):
        load_splits({"name": name, "root": str(root)})


def test_default_root_is_env_then_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "env-root"))
    with pytest.raises(DataUnavailable, match=str(tmp_path / "env-root" / "cifar-10-batches-py")):
        check_available({"name": "cifar10"})
    write_cifar10(tmp_path / "env-root")
    check_available({"name": "cifar10"})
    assert load_splits({"name": "cifar10"}).train_x.shape[0] == 30
    monkeypatch.delenv("BENCH_DATA_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DataUnavailable, match=str(tmp_path / "home" / ".cache" / "bench" / "data" / "cifar-100-python")):
        check_available({"name": "cifar100"})


def test_corrupt_file_is_data_unavailable_naming_it(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataUnavailable, match="data_batch_3"):
        load_splits({"name": "cifar10", "root": str(tmp_path)})


def test_root_and_download_do_not_change_trial_ids():
    from bench.spec import parse_sweep

    def trial_id(dataset):
        return parse_sweep({"name": "t", "model": "resnet18", "dataset": dataset}).trials[0]["trial_id"]

    base = trial_id({"name": "cifar10"})
    assert trial_id({"name": "cifar10", "root": "/somewhere/else", "download": True}) == base
    assert trial_id({"name": "cifar10", "shuffle_grid": 8}) != base
    assert dataset_hash_view(resolve_dataset({"name": "svhn", "root": "/a"})) == {"name": "svhn"}
    # users' folders: the path is not hashed, its name is
    a = dataset_hash_view(resolve_dataset({"name": "imagefolder", "root": "/x/flowers"}))
    assert a == dataset_hash_view(resolve_dataset({"name": "imagefolder", "root": "/y/flowers"}))
    assert a != dataset_hash_view(resolve_dataset({"name": "imagefolder", "root": "/x/birds"}))
    with pytest.raises(BenchInputError, match="hash_exclude"):
        parse_options({"name": "cifar10", "hash_exclude": ["shuffle_grid"]})


def test_shuffle_grid_moves_blocks_by_one_fixed_permutation(tmp_path):
    write_cifar10(tmp_path)
    plain = load_splits({"name": "cifar10", "root": str(tmp_path)})
    shuffled = load_splits({"name": "cifar10", "root": str(tmp_path), "shuffle_grid": 8})
    assert shuffled.meta["shuffle_grid"] == 8
    perm = block_permutation(16, 0)
    assert not torch.equal(perm, torch.arange(16))
    for plain_x, shuffled_x in ((plain.train_x, shuffled.train_x), (plain.test_x, shuffled.test_x)):
        for pos in range(16):  # output block `pos` is input block perm[pos], for every image, train and test
            r, c = divmod(pos, 4)
            sr, sc = divmod(int(perm[pos]), 4)
            assert torch.equal(shuffled_x[..., 8 * r : 8 * r + 8, 8 * c : 8 * c + 8], plain_x[..., 8 * sr : 8 * sr + 8, 8 * sc : 8 * sc + 8])
    same = load_splits({"name": "cifar10", "root": str(tmp_path), "shuffle_grid": 32})
    assert torch.equal(same.train_x, plain.train_x)  # one 32-px block: no shuffle
    other_seed = load_splits({"name": "cifar10", "root": str(tmp_path), "shuffle_grid": 8, "shuffle_seed": 1})
    assert not torch.equal(other_seed.train_x, shuffled.train_x)


def test_shuffle_grid_keeps_the_patches_of_a_vit_with_smaller_patches():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for g in (2, 4, 8, 16):
        y = block_shuffle(x, g, 0)
        patches = lambda t: {tuple(p.flatten().tolist()) for p in t.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)}
        assert patches(x) == patches(y) and not torch.equal(x, y)
    with pytest.raises(BenchInputError, match="shuffle_grid"):
        parse_options({"name": "cifar100", "shuffle_grid": 3})


def test_cli_run_with_missing_data_exits_2_with_one_line_before_any_trial(tmp_path, capsys):
    import yaml

    from bench.cli import main

    sweep = tmp_path / "sweep.yaml"
    missing_root = tmp_path / "no-data"
    sweep.write_text(yaml.safe_dump({
        "name": "missing-data", "model": "resnet18",
        "dataset": {"name": "cifar10", "root": str(missing_root)},
        "train": {"epochs": 1},
    }))
    results = tmp_path / "results"
    code = main(["run", str(sweep), "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and str(missing_root / "cifar-10-batches-py") in err
    assert not (results / "missing-data" / "trials").exists()
