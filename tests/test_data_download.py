"""falign.data downloads, against a local HTTP server serving copies of the real files."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA as REAL
from conftest import IDX_NAMES

from falign.data import DatasetError, download, load_dataset
from falign.data import fetch as fetch_mod
from falign.data.fetch import REMOTES, md5sum


def _need_mnist() -> None:
    if not all((REAL / "mnist" / f"{n}.gz").is_file() for n in IDX_NAMES):
        pytest.skip(f"real MNIST IDX files not found under {REAL}/mnist (set FALIGN_DATA)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture
def served(tmp_path, monkeypatch) -> Iterator[tuple[Path, str]]:
    """(folder, url): an HTTP server on 127.0.0.1 serving the folder, shut down afterwards."""
    monkeypatch.delenv("FALIGN_DATA_MIRROR", raising=False)
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _serve_mnist(folder: Path) -> None:
    (folder / "mnist").mkdir()
    for name in IDX_NAMES:
        (folder / "mnist" / f"{name}.gz").symlink_to(REAL / "mnist" / f"{name}.gz")


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.endswith(".part")]


def test_checksum_table_matches_the_real_decompressed_files():
    found = 0
    for name in ("mnist", "fashion-mnist"):
        for remote in REMOTES[name]:
            path = REAL / remote.path
            if path.is_file():
                assert remote.md5_of_gunzipped
                assert md5sum(path, gunzip=True) == remote.md5, path
                found += 1
    if not found:
        pytest.skip(f"no real IDX files under {REAL}")
    jpeg = REAL / "cifar10-jpeg.tar.gz"
    if jpeg.is_file():
        assert hashlib.md5(jpeg.read_bytes()).hexdigest() == REMOTES["cifar10-jpeg"][0].md5


def test_download_mnist_from_a_mirror_then_load(served, tmp_path):
    _need_mnist()
    folder, url = served
    _serve_mnist(folder)
    root = tmp_path / "data"
    paths = download("mnist", root, base_url=url)
    assert paths == [root / "mnist" / f"{n}.gz" for n in IDX_NAMES]
    for n in IDX_NAMES:
        got, want = root / "mnist" / f"{n}.gz", REAL / "mnist" / f"{n}.gz"
        assert got.read_bytes() == want.read_bytes()
    assert _leftovers(root) == []
    ds = load_dataset("mnist", root, val_size=0)
    assert int(ds.train.y[0]) == 5 and int(ds.test.y[0]) == 7
    # present files are not fetched again: a dead mirror does not matter
    assert download("mnist", root, base_url="http://127.0.0.1:9/") == paths


def test_load_dataset_download_true_uses_the_mirror_variable(served, tmp_path, monkeypatch):
    _need_mnist()
    folder, url = served
    _serve_mnist(folder)
    monkeypatch.setenv("FALIGN_DATA_MIRROR", url + "/")
    ds = load_dataset("mnist", tmp_path / "data", download=True, subset=10)
    assert len(ds.train) == 10
    assert (tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (gzip.compress(b"\0\0\x08\x01\0\0\0\x01\x05"), "checksum mismatch"),
        (b"not gzip at all", "not a valid gzip"),
        (None, "cannot download"),
    ],
    ids=["wrong-content", "not-gzip", "missing-on-server"],
)
def test_bad_download_is_rejected_and_nothing_is_left(served, tmp_path, content, match):
    folder, url = served
    (folder / "mnist").mkdir()
    if content is not None:
        (folder / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(content)
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match=match) as err:
        download("mnist", root, base_url=url)
    assert "train-images-idx3-ubyte.gz" in str(err.value) and "\n" not in str(err.value)
    assert list((root / "mnist").iterdir()) == []


def _fake_cifar_archive(path: Path, tmp: Path) -> None:
    folder = tmp / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 2]}
        (folder / name).write_bytes(pickle.dumps(batch, 2))
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname="cifar-10-batches-py")


def test_cifar10_archive_checksum_is_enforced(served, tmp_path, monkeypatch):
    folder, url = served
    _fake_cifar_archive(folder / "cifar-10-python.tar.gz", tmp_path / "build")
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetError, match="checksum mismatch.*c58f30108f718f92721af3b95e74349a"):
        download("cifar10", root, base_url=url)
    assert list(root.iterdir()) == []
    # with the fake's own checksum on record, the same file is accepted, extracted and loaded
    fake = fetch_mod.Remote(
        "cifar-10-python.tar.gz",
        None,
        md5sum(folder / "cifar-10-python.tar.gz"),
        present_if=("cifar-10-batches-py/test_batch",),
    )
    monkeypatch.setitem(fetch_mod.REMOTES, "cifar10", (fake,))
    monkeypatch.setenv("FALIGN_DATA_MIRROR", url)
    ds = load_dataset("cifar10", root, val_size=2, download=True)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 2)
    assert (root / "cifar-10-batches-py" / "test_batch").is_file() and _leftovers(root) == []


def test_download_without_a_location(tmp_path, monkeypatch):
    monkeypatch.delenv("FALIGN_DATA_MIRROR", raising=False)
    with pytest.raises(DatasetError, match="no official download location"):
        download("cifar10-jpeg", tmp_path)
    with pytest.raises(DatasetError, match="nothing to download"):
        download("imagefolder", tmp_path)
    with pytest.raises(DatasetError, match="did you mean 'mnist'"):
        download("mnits", tmp_path)
    assert download("xor", tmp_path) == []
