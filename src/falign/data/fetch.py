"""Downloads with checksum verification, standard library only.

Every file goes to a temporary file in its final directory, is verified, then renamed into
place (``os.replace``), so a data folder never holds a partial or unverified file. MNIST and
Fashion-MNIST are checked on their *decompressed* bytes: re-gzipped mirrors stay valid.

A mirror (``base_url`` or ``$FALIGN_DATA_MIRROR``) is laid out like a data folder:
``<mirror>/mnist/train-images-idx3-ubyte.gz``, ``<mirror>/cifar-10-python.tar.gz``, ...
Any URL scheme urllib reads works, ``file://`` included.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from .core import IDX_FILES, DatasetError

__all__ = ["REMOTES", "MissingDatasetError", "Remote", "fetch_dataset", "fetch_file", "md5sum",
           "missing_dataset", "missing_files"]

log = logging.getLogger(__name__)

TIMEOUT_S = 60


@dataclass(frozen=True)
class Remote:
    """One file of a dataset: where it goes under the data root and how to check it."""

    path: str  # relative to the data root, '/'-separated
    url: str | None  # official location, None where there is none
    md5: str
    md5_of_gunzipped: bool = False  # md5 is of the decompressed content
    present_if: tuple[str, ...] = ()  # other relative paths that make fetching unnecessary


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5 of the decompressed IDX files (upstream's published .gz MD5s change with re-gzipping)
_IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


def _idx_remotes(name: str, torchvision_dir: str, base: str) -> tuple[Remote, ...]:
    stems = [s for pair in IDX_FILES.values() for s in pair]
    return tuple(
        Remote(
            f"{name}/{s}.gz",
            base + s + ".gz",
            _IDX_MD5[name][s],
            md5_of_gunzipped=True,
            # the loader also reads these: plain IDX, and torchvision's download folder
            present_if=(f"{name}/{s}", *(f"{torchvision_dir}/raw/{s}{z}" for z in (".gz", ""))),
        )
        for s in stems
    )


REMOTES: dict[str, tuple[Remote, ...]] = {
    "mnist": _idx_remotes("mnist", "MNIST", _MNIST_URL),
    "fashion-mnist": _idx_remotes("fashion-mnist", "FashionMNIST", _FASHION_URL),
    "cifar10": (
        Remote(
            "cifar-10-python.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            present_if=("cifar-10-batches-py/test_batch",),
        ),
    ),
    "cifar10-jpeg": (
        Remote(
            "cifar10-jpeg.tar.gz", None, "28a62e4c4f3f8a5a12efe3353c9f59bf",
            present_if=("cifar10-jpeg/train",),
        ),  # fmt: skip
    ),
}


def md5sum(path: Path, *, gunzip: bool = False) -> str:
    """Hex MD5 of a file's bytes, or of its decompressed bytes with ``gunzip``."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as raw, (gzip.open(raw) if gunzip else raw) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_file(url: str, dest: Path, md5: str, *, gunzip: bool = False) -> Path:
    """Download ``url`` to ``dest`` if its MD5 matches; on any failure leave nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s", url)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
                shutil.copyfileobj(r, out, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise DatasetError(f"cannot download {url}: {reason}") from e
        try:
            got = md5sum(tmp, gunzip=gunzip)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"downloaded {url} is not a valid gzip file ({e})") from e
        if got != md5:
            what = "decompressed content" if gunzip else "file"
            raise DatasetError(
                f"checksum mismatch for {url}: MD5 of the {what} is {got}, expected {md5}; "
                f"the download was discarded"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def fetch_dataset(name: str, root: Path, base_url: str | None = None) -> list[Path]:
    """Fetch the files of dataset ``name`` that ``root`` lacks; return all its file paths."""
    base = base_url if base_url is not None else os.environ.get("FALIGN_DATA_MIRROR") or None
    paths = []
    for remote in REMOTES[name]:
        dest = root / remote.path
        have = [root / p for p in (remote.path, *remote.present_if) if (root / p).exists()]
        if have:
            paths.append(have[0])
            continue
        if base is not None:
            url = base.rstrip("/") + "/" + remote.path
        elif remote.url is not None:
            url = remote.url
        else:
            raise DatasetError(
                f"{name} has no official download location: copy {remote.path} into {root}, "
                f"or pass base_url= (or set FALIGN_DATA_MIRROR) to a mirror that has it"
            )
        paths.append(fetch_file(url, dest, remote.md5, gunzip=remote.md5_of_gunzipped))
    return paths


class MissingDatasetError(DatasetError):
    """A downloadable dataset is not under the data root: one line naming the files missing, how
    to get them (on the command line and in Python) and the datasets that are there.  ``name``
    and ``root`` say which and where.  The loaders raise it; ``falign`` prints it as it is."""

    def __init__(self, name: str, root: Path) -> None:
        from .text import DEFAULT_TEXT

        self.name, self.root = name, Path(root)
        found = [n for n in REMOTES if not missing_files(n, root)]
        if (root / DEFAULT_TEXT).is_file():
            found.append("text")
        if all(r.url for r in REMOTES[name]):
            how = f"get it with `falign download {name}` or add --download (online)"
        else:
            how = (f"{name} has no official download location: copy it there, or add --download with "
                   "FALIGN_DATA_MIRROR set to a mirror that has it")
        super().__init__(
            f"dataset {name} not found under {root} (missing {', '.join(missing_files(name, root))}); "
            f"{how}, or point FALIGN_DATA or --data-dir at a folder that has it; datasets found under "
            f"{root}: {', '.join(found) if found else 'none'} (in Python: load_dataset(..., "
            "download=True))")


def missing_files(name: str, root: Path) -> list[str]:
    """The files of the downloadable dataset ``name`` that ``root`` lacks (none: it is there)."""
    return [r.path for r in REMOTES.get(name, ())
            if not any((root / p).exists() for p in (r.path, *r.present_if))]


def missing_dataset(name: str, root: Path) -> MissingDatasetError | None:
    """The error a loader raises when the downloadable dataset ``name`` is not under ``root``;
    None when it is there (or ``name`` is not downloadable)."""
    root = Path(root)
    return MissingDatasetError(name, root) if missing_files(name, root) else None
