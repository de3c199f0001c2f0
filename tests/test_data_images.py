"""falign.data: CIFAR-10 pickles, the JPEG copy, and imagefolder, on small files the tests write."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA
from PIL import Image

from falign.data import DatasetError, load_dataset
from falign.data import folder as folder_mod
from falign.data.cifar import CIFAR10_CLASSES

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FALIGN_CACHE", str(tmp_path / "user-cache"))


def _read_only(path: Path) -> None:
    path.chmod(0o555)  # no write bit: the loaders leave it alone even when run as root


# ------------------------------------------------------------------------- CIFAR-10 (pickles)


def _write_cifar(folder: Path, per_batch: int = 4, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The python distribution's format: dicts of b'data' (N, 3072) and b'labels', protocol 2.

    Returns the images as (N, 32, 32, 3) HWC and the labels, train then test.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    images, labels = [], []
    for name in BATCHES:
        hwc = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        rows = np.stack([np.concatenate([img[:, :, c].ravel() for c in range(3)]) for img in hwc])
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": rows}, f, 2)
        images.append(hwc)
        labels.append(np.array(y))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f, 2)
    return (np.concatenate(images[:5]), np.concatenate(labels[:5]), images[5], labels[5])


def _check_cifar(ds, train_hwc, train_y, test_hwc, test_y) -> None:
    chw = torch.from_numpy(train_hwc).permute(0, 3, 1, 2)
    for split in (ds.train, ds.val):
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (3, 32, 32)
        assert torch.equal(split.x, chw[split.index])
        assert torch.equal(split.y, torch.from_numpy(train_y)[split.index])
    assert torch.equal(ds.test.x, torch.from_numpy(test_hwc).permute(0, 3, 1, 2))
    assert torch.equal(ds.test.y, torch.from_numpy(test_y))


def test_cifar10_reads_the_pickled_batches(tmp_path):
    data = _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path, val_size=4)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 4)
    assert ds.description == "CIFAR-10, 16/4/4"
    assert ds.classes == CIFAR10_CLASSES and ds.num_classes == 10
    assert ds.input_shape == (3, 24, 24)
    _check_cifar(ds, *data)
    x = ds.train_transform(ds.train.x, torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 24, 24) and x.dtype == torch.float32


def test_cifar10_full_size_option_and_default_split_size(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path, val_size=2, crop=None, augment=False)
    assert ds.input_shape == (3, 32, 32) and ds.train_transform is ds.eval_transform
    with pytest.raises(DatasetError, match="val_size=5000"):
        load_dataset("cifar10", tmp_path)  # the 45k/5k protocol needs the real 50k


def _tar(path: Path, folder: Path, arcname: str) -> None:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=arcname)


def _cifar_archive(tmp_path: Path) -> tuple[Path, tuple[np.ndarray, ...]]:
    """A folder holding only cifar-10-python.tar.gz, and what _write_cifar wrote into it."""
    src = tmp_path / "src"
    data = _write_cifar(src / "cifar-10-batches-py")
    root = tmp_path / "root"
    root.mkdir()
    _tar(root / "cifar-10-python.tar.gz", src / "cifar-10-batches-py", "cifar-10-batches-py")
    return root, data


def test_cifar10_archive_is_extracted_once_atomically(tmp_path):
    root, data = _cifar_archive(tmp_path)
    ds = load_dataset("cifar10", root, val_size=4)
    _check_cifar(ds, *data)
    assert sorted(p.name for p in root.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]  # no temporary folder left
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(
        [*BATCHES, "batches.meta"]
    )


def test_cifar10_archive_in_a_read_only_folder_is_read_in_place(tmp_path):
    root, data = _cifar_archive(tmp_path)
    _read_only(root)
    ds = load_dataset("cifar10", root, val_size=4)
    _check_cifar(ds, *data)
    assert [p.name for p in root.iterdir()] == ["cifar-10-python.tar.gz"]


def test_cifar10_corrupt_or_hostile_batches_are_rejected_naming_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    bad = folder / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetError, match="truncated") as err:
        load_dataset("cifar10", tmp_path, val_size=1)
    assert str(bad) in str(err.value)

    class Hostile:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad.write_bytes(pickle.dumps({b"data": Hostile(), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing to load"):
        load_dataset("cifar10", tmp_path, val_size=1)
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetError, match="missing test_batch"):
        load_dataset("cifar10", tmp_path, val_size=1)


def test_cifar10_missing_names_the_files_and_download(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    for part in ("cifar-10-python.tar.gz", str(tmp_path), "download=True", "falign download cifar10"):
        assert part in msg


# ----------------------------------------------------------------- CIFAR-10 (JPEG copy), fake

# a distinct flat colour per class: JPEG reproduces flat colours almost exactly
COLOURS = np.array([[25 * i, 255 - 25 * i, (90 * i) % 256] for i in range(10)], dtype=np.uint8)


def _jpeg(colour: np.ndarray, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.tile(colour, (size, size, 1))).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_jpeg_tree(top: Path, per_class: dict[str, int]) -> None:
    for split, n in per_class.items():
        for c, name in enumerate(CIFAR10_CLASSES):
            (top / split / name).mkdir(parents=True)
            for i in range(n):
                (top / split / name / f"{i:04d}.jpg").write_bytes(_jpeg(COLOURS[c]))
    (top / "train" / "README.txt").write_text("not an image")


@pytest.fixture
def jpeg_root(tmp_path) -> Path:
    tree = tmp_path / "tree"
    _write_jpeg_tree(tree, {"train": 3, "test": 1})
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar10-jpeg.tar.gz", "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(tree / split, arcname=split)
    return root


def _check_colours(ds) -> None:
    for split in (ds.train, ds.val, ds.test):
        assert split.x.shape[1:] == (3, 32, 32) and split.x.dtype == torch.uint8
        mean = split.x.double().mean((2, 3))  # (N, 3)
        expect = torch.from_numpy(COLOURS[split.y.numpy()]).double()
        assert (mean - expect).abs().max() < 3


def test_cifar10_jpeg_reads_the_class_folders(jpeg_root):
    ds = load_dataset("cifar10-jpeg", jpeg_root, val_size=5)
    assert ds.description.startswith("CIFAR-10 (JPEG copy)")
    assert ds.description == "CIFAR-10 (JPEG copy), 25/5/10"
    assert ds.classes == CIFAR10_CLASSES  # sorted folder names = the standard order
    assert ds.test.y.tolist() == list(range(10))  # ordered by class, then file name
    assert ds.input_shape == (3, 24, 24)
    _check_colours(ds)
    x = ds.train_transform(ds.train.x, torch.Generator().manual_seed(0))
    assert x.shape == (25, 3, 24, 24)


def test_cifar10_jpeg_second_load_uses_the_cache(jpeg_root, monkeypatch, tmp_path):
    first = load_dataset("cifar10-jpeg", jpeg_root, val_size=5)
    caches = list((tmp_path / "user-cache").glob("*cifar10-jpeg.falign-*.npz"))
    assert len(caches) == 1 and not list(jpeg_root.glob("*.npz"))
    assert not [p for p in jpeg_root.iterdir() if p.name.endswith(".part")]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(folder_mod, "_decode_tree", no_decoding)
    second = load_dataset("cifar10-jpeg", jpeg_root, val_size=5)
    assert torch.equal(first.train.x, second.train.x)
    assert torch.equal(first.test.y, second.test.y)
    # a changed archive invalidates the cache
    archive = jpeg_root / "cifar10-jpeg.tar.gz"
    os.utime(archive, ns=(0, archive.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("cifar10-jpeg", jpeg_root, val_size=5)


def test_cifar10_jpeg_read_only_folder_caches_in_the_user_cache(jpeg_root, tmp_path):
    _read_only(jpeg_root)
    ds = load_dataset("cifar10-jpeg", jpeg_root, val_size=5)
    _check_colours(ds)
    assert [p.name for p in jpeg_root.iterdir()] == ["cifar10-jpeg.tar.gz"]
    assert len(list((tmp_path / "user-cache").glob("*cifar10-jpeg.falign-*.npz"))) == 1


def test_cifar10_jpeg_extracted_folder_gives_the_same_arrays(jpeg_root, tmp_path):
    root = tmp_path / "extracted"
    with tarfile.open(jpeg_root / "cifar10-jpeg.tar.gz") as tf:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(root / "cifar10-jpeg", **safe)
    a = load_dataset("cifar10-jpeg", jpeg_root, val_size=5)
    b = load_dataset("cifar10-jpeg", root, val_size=5)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)


def test_cifar10_jpeg_corrupt_image_is_named(tmp_path):
    tree = tmp_path / "cifar10-jpeg"
    _write_jpeg_tree(tree, {"train": 1, "test": 1})
    bad = tree / "train" / "cat" / "0000.jpg"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(DatasetError, match="cannot decode image") as err:
        load_dataset("cifar10-jpeg", tmp_path, val_size=1)
    assert str(bad) in str(err.value)


def test_cifar10_jpeg_missing_says_there_is_no_official_download(tmp_path):
    with pytest.raises(DatasetError, match="no official download location") as err:
        load_dataset("cifar10-jpeg", tmp_path)
    assert "cifar10-jpeg.tar.gz" in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.slow
def test_real_cifar10_jpeg_archive_counts_and_protocol_split():
    root = DATA
    if not (root / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip(f"cifar10-jpeg.tar.gz not found under {root} (set FALIGN_DATA)")
    ds = load_dataset("cifar10-jpeg", root)
    assert ds.description == "CIFAR-10 (JPEG copy), 45000/5000/10000"
    assert ds.classes == CIFAR10_CLASSES
    assert torch.cat([ds.train.y, ds.val.y]).bincount().tolist() == [5000] * 10
    assert ds.test.y.bincount().tolist() == [1000] * 10
    both = torch.cat([ds.train.index, ds.val.index]).sort().values
    assert torch.equal(both, torch.arange(50000))
    x = ds.eval_transform(ds.test.x, None)
    assert x.shape == (10000, 3, 24, 24)
    assert x.mean((0, 2, 3)).abs().max() < 0.1 and (x.std((0, 2, 3)) - 1).abs().max() < 0.1


# -------------------------------------------------------------------------------- imagefolder


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _grey_tree(top: Path, rng: np.random.Generator) -> dict[str, list[tuple[np.ndarray, int]]]:
    """PNG (lossless) greys: train 3 + 2 images, val 1 + 1, test 1 + 1; classes 'ant', 'bee'."""
    made: dict[str, list[tuple[np.ndarray, int]]] = {}
    for split, counts in {"train": (3, 2), "val": (1, 1), "test": (1, 1)}.items():
        for label, (name, n) in enumerate(zip(("ant", "bee"), counts, strict=True)):
            (top / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (6, 5), dtype=np.uint8)
                (top / split / name / f"img{i}.png").write_bytes(_png(img))
                made.setdefault(split, []).append((img, label))
    return made


def test_imagefolder_reads_a_folder_exactly(tmp_path):
    made = _grey_tree(tmp_path / "set", np.random.default_rng(0))
    ds = load_dataset("imagefolder", tmp_path, path=tmp_path / "set")
    assert ds.classes == ["ant", "bee"] and ds.input_shape == (1, 6, 5)
    for name in ("train", "val", "test"):
        split = getattr(ds, name)
        assert split.x.shape == (len(made[name]), 1, 6, 5)
        assert torch.equal(split.x[:, 0], torch.from_numpy(np.stack([a for a, _ in made[name]])))
        assert split.y.tolist() == [label for _, label in made[name]]
    x = ds.eval_transform(ds.train.x, None)  # normalised with the training set's own statistics
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(unbiased=False)) - 1) < 1e-5
    with pytest.raises(DatasetError, match="own validation split"):
        load_dataset("imagefolder", tmp_path, path=tmp_path / "set", val_size=1)


def test_imagefolder_zip_with_a_top_folder_equals_the_folder(tmp_path):
    _grey_tree(tmp_path / "set", np.random.default_rng(1))
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        for p in sorted((tmp_path / "set").rglob("*.png")):
            zf.write(p, "top/" + p.relative_to(tmp_path / "set").as_posix())
        zf.writestr("__MACOSX/top/train/ant/._img0.png", b"junk")
    a = load_dataset("imagefolder", tmp_path, path="set")  # relative to the data root
    b = load_dataset("imagefolder", tmp_path, path=tmp_path / "set.zip")
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(a, s).x, getattr(b, s).x)
        assert torch.equal(getattr(a, s).y, getattr(b, s).y)


def test_imagefolder_sizes_and_channels(tmp_path):
    top = tmp_path / "mixed"
    for split in ("train", "test"):
        (top / split / "a").mkdir(parents=True)
    grey = np.full((8, 8), 77, np.uint8)
    colour = np.zeros((10, 10, 3), np.uint8)
    colour[..., 0] = 200
    (top / "train" / "a" / "g.png").write_bytes(_png(grey))
    (top / "train" / "a" / "c.png").write_bytes(_png(colour))
    (top / "test" / "a" / "g.png").write_bytes(_png(grey))
    with pytest.raises(DatasetError, match="size=N") as err:
        load_dataset("imagefolder", path=top)
    assert "c.png" in str(err.value) and "g.png" in str(err.value)
    ds = load_dataset("imagefolder", path=top, size=4, normalize=False)
    assert ds.input_shape == (3, 4, 4) and ds.train.x.shape == (2, 3, 4, 4)
    assert torch.all(ds.train.x[0] == torch.tensor([200, 0, 0], dtype=torch.uint8).view(3, 1, 1))
    assert torch.all(ds.train.x[1] == 77)  # grey replicated into three channels
    assert ds.val is None and ds.description.endswith("2/0/1")
    one = load_dataset("imagefolder", path=top, size=4, channels=1)
    assert one.input_shape == (1, 4, 4)


def test_imagefolder_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="needs path="):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("imagefolder", tmp_path, path="nowhere")
    (tmp_path / "only-train" / "train" / "a").mkdir(parents=True)
    (tmp_path / "only-train" / "train" / "a" / "x.png").write_bytes(_png(np.zeros((2, 2), "u1")))
    with pytest.raises(DatasetError, match="no images under test/"):
        load_dataset("imagefolder", tmp_path, path="only-train")
