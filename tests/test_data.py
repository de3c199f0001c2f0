"""falign.data: registry, MNIST / Fashion-MNIST from the real IDX files, splits, batches, errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from conftest import DATA as REAL
from conftest import IDX_NAMES

from falign.data import (
    Dataset,
    DatasetError,
    MissingDatasetError,
    Split,
    available_datasets,
    batches,
    data_root,
    load_dataset,
)
from falign.data.idx import read_idx

# published class counts of the 60k MNIST training set and the 10k test set
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _need(sub: str) -> Path:
    if not (REAL / sub / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real {sub} IDX files not found under {REAL} (set FALIGN_DATA)")
    return REAL


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist", _need("mnist"))


@pytest.fixture(scope="module")
def mnist_full() -> Dataset:
    return load_dataset("mnist", _need("mnist"), val_size=0)


# ----------------------------------------------------------------------------------- registry


def test_available_datasets_lists_every_registered_name():
    assert available_datasets() == sorted(
        ["mnist", "fashion-mnist", "cifar10", "cifar10-jpeg", "imagefolder", "text", "xor"]
    )


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("mnsit", "mnist"), ("fashion_mnst", "fashion-mnist"), ("cifar-10", "cifar10")],
)
def test_unknown_dataset_suggests_the_nearest_name(typo, suggestion):
    with pytest.raises(DatasetError) as err:
        load_dataset(typo)
    msg = str(err.value)
    assert f"did you mean {suggestion!r}" in msg
    assert "available:" in msg and "xor" in msg and "\n" not in msg


def test_names_are_case_and_underscore_insensitive():
    assert load_dataset("XOR").name == "xor"


def test_unknown_option_is_rejected_with_the_accepted_ones(tmp_path):
    with pytest.raises(DatasetError, match=r"no option 'crop'.*pad_to, normalize"):
        load_dataset("mnist", tmp_path, crop=24)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FALIGN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_root() == tmp_path / "data"
    monkeypatch.setenv("FALIGN_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    # a relative path is taken from the working directory now, and stays put afterwards
    monkeypatch.setenv("FALIGN_DATA", "rel")
    root = data_root()
    assert root == tmp_path / "rel" and root.is_absolute()


# ---------------------------------------------------------------------------------------- xor


def test_xor_is_the_truth_table_in_every_split():
    ds = load_dataset("xor")
    assert ds.num_classes == 2 and ds.input_shape == (2,)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        a, b = split.x[:, 0].long(), split.x[:, 1].long()
        assert torch.equal(split.y, a ^ b)
        assert len(split) == 4
    assert ds.train_transform(ds.train.x, None).dtype == torch.float32


# -------------------------------------------------------------------------------------- MNIST


def test_mnist_shapes_dtypes_and_description(mnist):
    assert mnist.name == "mnist" and mnist.num_classes == 10
    assert mnist.classes == [str(i) for i in range(10)]
    assert mnist.input_shape == (1, 28, 28)
    assert mnist.train.x.shape == (55000, 1, 28, 28) and mnist.train.x.dtype == torch.uint8
    assert mnist.val is not None and mnist.val.x.shape == (5000, 1, 28, 28)
    assert mnist.test.x.shape == (10000, 1, 28, 28)
    for split in (mnist.train, mnist.val, mnist.test):
        assert split.y.dtype == torch.int64 and split.y.shape == (len(split),)
    assert mnist.description == "MNIST, 55000/5000/10000"
    out = mnist.train_transform(mnist.train.x[:7], None)
    assert out.shape == (7, 1, 28, 28) and out.dtype == torch.float32


def test_mnist_label_counts_and_first_labels(mnist, mnist_full):
    assert mnist_full.val is None
    assert int(mnist_full.train.y[0]) == 5 and int(mnist_full.test.y[0]) == 7
    assert mnist_full.train.y.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert mnist.test.y.bincount().tolist() == MNIST_TEST_COUNTS
    assert mnist.val is not None
    together = torch.cat([mnist.train.y, mnist.val.y]).bincount().tolist()
    assert together == MNIST_TRAIN_COUNTS


def test_split_is_disjoint_covers_train_and_matches_the_source(mnist, mnist_full):
    train, val = mnist.train, mnist.val
    assert val is not None and train.index is not None and val.index is not None
    both = torch.cat([train.index, val.index])
    assert torch.equal(both.sort().values, torch.arange(60000))  # disjoint and complete
    # the held-out samples are the source samples at those positions
    assert torch.equal(val.x, mnist_full.train.x[val.index])
    assert torch.equal(train.y, mnist_full.train.y[train.index])


def test_split_is_reproducible_and_seeded(mnist):
    again = load_dataset("mnist", REAL)
    other = load_dataset("mnist", REAL, split_seed=7)
    assert again.val is not None and other.val is not None and mnist.val is not None
    assert torch.equal(again.val.index, mnist.val.index)
    assert not torch.equal(other.val.index, mnist.val.index)


def test_val_size_bounds(tmp_path):
    _need("mnist")
    ds = load_dataset("mnist", REAL, val_size=100)
    assert ds.val is not None and (len(ds.train), len(ds.val)) == (59900, 100)
    with pytest.raises(DatasetError, match="val_size=60000"):
        load_dataset("mnist", REAL, val_size=60000)


def test_subset_is_a_seeded_sample_of_each_split(mnist):
    small = load_dataset("mnist", REAL, subset=50)
    assert small.val is not None and mnist.val is not None
    assert (len(small.train), len(small.val), len(small.test)) == (50, 50, 50)
    assert small.description == "MNIST, 50/50/50"
    # a subset of the same train/val split, not a new split
    assert set(small.train.index.tolist()) <= set(mnist.train.index.tolist())
    assert set(small.val.index.tolist()) <= set(mnist.val.index.tolist())
    assert torch.equal(load_dataset("mnist", REAL, subset=50).test.index, small.test.index)
    assert len(small.test.y.unique()) > 5  # shuffled, not the first 50


def test_mnist_normalisation_gives_zero_mean_unit_std(mnist_full):
    x = mnist_full.eval_transform(mnist_full.train.x, None)
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std()) - 1.0) < 1e-3


def test_normalize_false_gives_pixels_over_255(mnist):
    raw = load_dataset("mnist", REAL, normalize=False, subset=200)
    x = raw.eval_transform(raw.train.x, None)
    assert torch.allclose(x, raw.train.x.double().div(255).float())
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_pad_to_32_zero_pads_before_normalising():
    _need("mnist")
    ds = load_dataset("mnist", REAL, pad_to=32, subset=64)
    plain = load_dataset("mnist", REAL, subset=64)
    assert ds.input_shape == (1, 32, 32)
    out = ds.eval_transform(ds.test.x, None)
    assert out.shape == (64, 1, 32, 32)
    assert torch.equal(out[:, :, 2:30, 2:30], plain.eval_transform(plain.test.x, None))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.allclose(out[:, 0][:, border], torch.tensor(-0.1307 / 0.3081))
    with pytest.raises(DatasetError, match="pad_to=31"):
        load_dataset("mnist", REAL, pad_to=31)


def test_fashion_mnist_loads_with_its_own_statistics():
    _need("fashion-mnist")
    ds = load_dataset("fashion-mnist", REAL, val_size=0)
    assert ds.classes[9] == "Ankle boot" and ds.num_classes == 10
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert int(ds.train.y[0]) == 9 and int(ds.test.y[0]) == 9
    assert ds.train.y.bincount().tolist() == [6000] * 10
    x = ds.eval_transform(ds.train.x, None)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-3


# ------------------------------------------------------------------------------ IDX and errors


def _idx_bytes(array: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.numpy().tobytes()


def test_read_idx_plain_and_gzip_agree_with_a_hand_built_file(tmp_path):
    a = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(a)))
    assert torch.equal(read_idx(tmp_path / "a"), a)
    assert torch.equal(read_idx(tmp_path / "a.gz"), a)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (gzip.compress(_idx_bytes(torch.zeros(10, dtype=torch.uint8)))[:-9], "gzip"),
        (_idx_bytes(torch.zeros(10, dtype=torch.uint8))[:-1], "truncated"),
        (_idx_bytes(torch.zeros(10, dtype=torch.uint8)) + b"\0", "truncated or corrupt"),
        (b"\x12\x34\x08\x01" + b"\0" * 8, "magic"),
        (b"\0\0\x0d\x01" + struct.pack(">I", 1) + b"\0" * 4, "element type"),
        (b"\0\0\x08\x03\0\0", "header"),
    ],
    ids=["truncated-gzip", "short-data", "long-data", "magic", "float-type", "short-header"],
)
def test_read_idx_rejects_corrupt_files_naming_them(tmp_path, content, match):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=match) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_real_file_fails_the_load_naming_it(tmp_path):
    _need("mnist")
    (tmp_path / "mnist").mkdir()
    for name in IDX_NAMES[:3]:
        (tmp_path / "mnist" / f"{name}.gz").symlink_to(REAL / "mnist" / f"{name}.gz")
    good = (REAL / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match="truncated") as err:
        load_dataset("mnist", tmp_path)
    assert str(bad) in str(err.value)


def test_uncompressed_idx_files_are_accepted(tmp_path):
    _need("mnist")
    (tmp_path / "mnist").mkdir()
    for name in IDX_NAMES:
        src = REAL / "mnist" / f"{name}.gz"
        if name.startswith("train"):
            (tmp_path / "mnist" / f"{name}.gz").symlink_to(src)
        else:
            (tmp_path / "mnist" / name).write_bytes(gzip.decompress(src.read_bytes()))
    ds = load_dataset("mnist", tmp_path, val_size=0)
    assert ds.test.y[:3].tolist() == [7, 2, 1] and len(ds.test) == 10000


def test_missing_files_error_names_them_the_folder_and_download(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    for name in IDX_NAMES:
        assert f"{name}.gz" in msg
    assert f"under {tmp_path} (missing fashion-mnist/" in msg  # the data root, the files under it
    assert "download=True" in msg and "falign download fashion-mnist" in msg
    assert isinstance(err.value, MissingDatasetError) and err.value.name == "fashion-mnist"


# ------------------------------------------------------------------------------------ batches


def _numbered(n: int) -> Split:
    return Split(torch.arange(n).view(n, 1), torch.arange(n))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(("n", "bs"), [(10, 3), (12, 4), (5, 8)])
def test_batches_cover_every_index_once_per_epoch(n, bs, shuffle):
    split = _numbered(n)
    g = torch.Generator().manual_seed(0)
    got = list(batches(split, bs, transform=None, shuffle=shuffle, generator=g))
    assert [len(x) for x, _ in got] == [min(bs, n - i) for i in range(0, n, bs)]
    xs = torch.cat([x[:, 0] for x, _ in got])
    ys = torch.cat([y for _, y in got])
    assert torch.equal(xs, ys)  # x and y stay paired
    assert torch.equal(xs.sort().values, torch.arange(n))
    assert torch.equal(xs, torch.arange(n)) != shuffle or n <= 1


def test_batches_drop_last_and_seeded_order():
    split = _numbered(10)

    def epoch(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        it = batches(split, 4, transform=None, shuffle=True, generator=g, drop_last=True)
        return [int(v) for x, _ in it for v in x[:, 0]]

    assert len(epoch(1)) == 8 and len(set(epoch(1))) == 8
    assert epoch(1) == epoch(1) and epoch(1) != epoch(2)
    with pytest.raises(ValueError, match="batch_size"):
        batches(split, 0, transform=None, shuffle=False)


def test_batches_apply_the_transform_with_the_generator(mnist):
    seen = []

    def transform(x, generator):
        seen.append(generator)
        return x.float() * 2

    g = torch.Generator().manual_seed(3)
    x, y = next(batches(mnist.test, 16, transform=transform, shuffle=False, generator=g))
    assert seen == [g] and x.dtype == torch.float32
    assert torch.equal(x, mnist.test.x[:16].float() * 2) and torch.equal(y, mnist.test.y[:16])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dataset_batches_and_transforms_stay_on_device():
    _need("mnist")
    ds = load_dataset("mnist", REAL, device="cuda", subset=256, pad_to=32)
    assert ds.train.x.is_cuda and ds.train.y.is_cuda and ds.device.type == "cuda"
    for g in (torch.Generator().manual_seed(0), torch.Generator("cuda").manual_seed(0)):
        for x, y in batches(ds.train, 100, transform=ds.train_transform, shuffle=True, generator=g):
            assert x.is_cuda and y.is_cuda and x.shape[1:] == (1, 32, 32)


# ------------------------------------------------------------------------ character text


def test_text_dataset_windows_contiguous_blocks_and_vocabulary(tmp_path) -> None:
    from falign.data import load_dataset

    text = "".join(chr(97 + (i * 7) % 26) for i in range(10_000))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    data = load_dataset("text", tmp_path, path="t.txt", seq_len=20)
    vocab = sorted(set(text))
    assert data.classes == vocab and data.num_classes == 26 and data.input_shape == (20,)
    ids = [vocab.index(c) for c in text]
    # train: the first 90 % in windows of 21, y the next character of x
    assert data.train.x[0].tolist() == ids[:20] and data.train.y[0].tolist() == ids[1:21]
    assert data.train.x[1].tolist() == ids[20:40]
    assert len(data.train) == (9000 - 1) // 20 and len(data.val) == (500 - 1) // 20
    assert data.test.x[0].tolist() == ids[9500:9520]  # the last block, unseen in training


def test_text_limit_cuts_the_text_but_keeps_the_whole_vocabulary(tmp_path) -> None:
    from falign.data import DatasetError, load_dataset

    text = "ab" * 2000 + "xyz"  # x, y, z only past the limit
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    data = load_dataset("text", tmp_path, path="t.txt", seq_len=10, limit=1000)
    assert data.classes == ["a", "b", "x", "y", "z"]
    assert len(data.train) == (900 - 1) // 10 and len(data.test) == (50 - 1) // 10
    assert "1000 characters of 4003" in data.description
    with pytest.raises(DatasetError, match="limit must be a positive"):
        load_dataset("text", tmp_path, path="t.txt", limit=0)


def test_text_dataset_reads_the_shipped_shakespeare_by_default() -> None:
    from conftest import DATA

    from falign.data import load_dataset

    if not (DATA / "shakespeare" / "shakespeare.txt").is_file():
        pytest.skip(f"shakespeare/shakespeare.txt not found under {DATA}")
    data = load_dataset("text", DATA, seq_len=64, subset=100)
    assert data.num_classes == 84 and data.input_shape == (64,)


def test_cifar_mean_and_std_replace_its_own_statistics():
    """mean = std = 0.5 maps pixels to [-1, 1], as torchvision's Normalize((0.5,) * 3, (0.5,) * 3)."""
    from falign.data.cifar import cifar_transforms

    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    train_t, eval_t, shape = cifar_transforms(None, 0, False, True, [0.5] * 3, [0.5] * 3)
    assert train_t is eval_t and shape == (3, 32, 32)
    assert torch.allclose(eval_t(x), x.float() / 255 * 2 - 1, atol=1e-6)
    for mean, std, normalize in (([0.5] * 3, None, True), ([0.5] * 3, [0.5] * 3, False),
                                 ([0.5] * 2, [0.5] * 2, True), ([0.5] * 3, [0.5, 0.5, 0.0], True)):
        with pytest.raises(DatasetError, match="cifar: "):
            cifar_transforms(None, 0, False, normalize, mean, std)
