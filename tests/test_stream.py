"""Streamed image folders: the same batches as the tree decoded once, bit for bit.

A small class-folder tree of PNGs (colour and grey, of several sizes) is read twice, resident
(decoded once into memory) and streamed (``stream: true``: decoded batch by batch in DataLoader
workers); every comparison below is ``torch.equal``. Per-rank shares (``batches(part=...)``)
concatenate to the global batch, and each rank decodes only its own share's files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ONE_THREAD
from PIL import Image

from falign.data import DatasetError, ImageTransform, LazyImages, batches, load_dataset
from falign.data import stream as stream_mod
from falign.data.stream import FileImages
from falign.training import load_checkpoint, load_config, parse_config, train
from falign.training.compare import run_compare

CLASSES = ("ant", "bee", "cow")
PER_CLASS = {"train": 8, "test": 3}
#: size 20 as read, then pad 2 + random 16 crop + flip for training, centre 16 for evaluation
OPTIONS = {"size": 20, "crop": 16, "pad": 2, "flip": True}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FALIGN_CACHE", str(tmp_path / "user-cache"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """train/<class>/*.png (8 a class) and test/<class>/*.png (3 a class), every fifth grey."""
    root = tmp_path_factory.mktemp("stream") / "tree"
    rng = np.random.default_rng(0)
    k = 0
    for split, n in PER_CLASS.items():
        for c in CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(18, 31, 2))
                grey = k % 5 == 0
                pixels = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:02d}.png")
                k += 1
    return root


def _load(tree: Path, stream: bool, *, workers: int = 0, **kw):
    """``kw``: load_dataset's own arguments (val_size, subset) and loader options over OPTIONS."""
    options = {**OPTIONS, **kw}
    if stream:
        options["workers"] = workers
    return load_dataset("imagefolder", path=str(tree), stream=stream, **options)


def _epochs(ds, gen: torch.Generator, epochs: int = 3, batch: int = 5) -> list[tuple[torch.Tensor, ...]]:
    out = []
    for _ in range(epochs):
        out += list(batches(ds.train, batch, transform=ds.train_transform, shuffle=True, generator=gen))
    out += list(batches(ds.test, 4, transform=ds.eval_transform, shuffle=False))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_resident_batches(tree: Path, workers: int) -> None:
    resident = _load(tree, False, val_size=4)
    streamed = _load(tree, True, val_size=4, workers=workers)
    assert isinstance(streamed.train.x, FileImages) and not isinstance(resident.train.x, LazyImages)
    assert streamed.train.x.workers == workers
    assert streamed.input_shape == resident.input_shape == (3, 16, 16)
    # the same images, labels and hold-out; mean / std from all 24 (<= 1000) training images
    assert torch.equal(streamed.train.index, resident.train.index)
    assert torch.equal(streamed.val.x[:], resident.val.x)
    assert streamed.train_transform.mean == resident.train_transform.mean
    assert "mean/std of 24 sampled training images" in streamed.description
    torch.manual_seed(123)
    a = _epochs(resident, torch.Generator().manual_seed(7))
    global_rng = torch.get_rng_state()
    torch.manual_seed(123)
    b = _epochs(streamed, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), global_rng)  # the DataLoader drew nothing from it
    assert len(a) == len(b) == 3 * 4 + 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)


def _train_config(tree: Path, stream: bool) -> dict:
    options = {"path": str(tree), "stream": stream, **OPTIONS, "crop": 12}
    if stream:
        options["workers"] = 1
    return {
        "name": "stream", "seed": 3, "device": "cpu",
        # 20 training images, batch 6: under two processes shares of 3 / 3, the last batch 1 / 1
        "data": {"name": "imagefolder", "val_size": 4, "options": options},
        "model": {"name": "mlp", "options": {"sizes": [3 * 12 * 12, 16, 3], "activation": "tanh"}},
        "rule": {"name": "fa"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "batch_size": 6},
    }


@pytest.fixture(scope="module")
def one_process(tree: Path, tmp_path_factory) -> dict[bool, tuple]:
    """stream -> (record, final weights) of the run in this process, resident and streamed."""
    runs = {}
    for stream in (False, True):
        out = tmp_path_factory.mktemp(f"stream-{stream}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FALIGN_CACHE", str(out / "cache"))
            record = train(parse_config(_train_config(tree, stream)), out / "run", log=None,
                           progress=False, threads=1)
        runs[stream] = record, load_checkpoint(out / "run" / "last.pt")["model"]
    return runs


def test_training_on_a_stream_ends_with_the_weights_of_the_resident_run(one_process) -> None:
    (ra, a), (rb, b) = one_process[False], one_process[True]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [e.train_loss for e in ra.epochs] == [e.train_loss for e in rb.epochs]
    assert ra.test_acc == rb.test_acc and rb.status == "completed" and "streamed" in rb.dataset


@pytest.mark.parametrize("stream", [False, True])
def test_the_shares_of_all_ranks_are_the_global_batch(tree: Path, stream: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _load(tree, stream)
    decoded: list[str] = []
    real = stream_mod.decode_image

    def counting(data, where, size, mode):
        decoded.append(str(data))
        return real(data, where, size, mode)

    monkeypatch.setattr(stream_mod, "decode_image", counting)
    world, batch = 3, 7  # 24 images: batches of 7, 7, 7, 3, shares of 3/2/2 and 1/1/1
    whole = list(batches(ds.train, batch, transform=ds.train_transform, shuffle=True,
                         generator=torch.Generator().manual_seed(5)))
    shares = []
    for rank in range(world):
        decoded.clear()
        shares.append(list(batches(ds.train, batch, transform=ds.train_transform, shuffle=True,
                                   generator=torch.Generator().manual_seed(5), part=(rank, world))))
        if stream:
            # only this rank's share of every batch was decoded, each file once
            order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(5))
            mine = torch.cat([torch.tensor_split(order[s:s + batch], world)[rank]
                              for s in range(0, len(order), batch)])
            assert decoded == [str(ds.train.x.path(int(i))) for i in mine]
        else:
            assert decoded == []
    for k, (x, y) in enumerate(whole):
        assert {s[k][2] for s in shares} == {y.shape[0]}  # n_global
        assert torch.equal(torch.cat([s[k][0] for s in shares]), x)
        assert torch.equal(torch.cat([s[k][1] for s in shares]), y)


def test_a_transform_given_rows_applies_the_whole_batchs_draws() -> None:
    x = torch.randint(0, 256, (11, 3, 9, 9), dtype=torch.uint8)
    t = ImageTransform(pad=2, crop=8, random_crop=True, flip=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    whole = t(x, torch.Generator().manual_seed(1))
    for rank in range(4):
        part = torch.tensor_split(torch.arange(11), 4)[rank]
        start = int(part[0])
        share = t(x[part], torch.Generator().manual_seed(1), rows=(start, 11))
        assert torch.equal(share, whole[part])
    with pytest.raises(ValueError, match="do not fit"):
        t(x, torch.Generator(), rows=(3, 11))


def test_hold_out_and_subset_select_lazily(tree: Path) -> None:
    resident = _load(tree, False, val_size=5, subset=9)
    streamed = _load(tree, True, val_size=5, subset=9)
    for a, b in ((resident.train, streamed.train), (resident.val, streamed.val),
                 (resident.test, streamed.test)):
        assert isinstance(b.x, FileImages) and len(b) == len(a)
        assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y)
        assert torch.equal(a.x, b.x[:])
        assert torch.equal(a.x[torch.tensor([2, 0])], b.x[torch.tensor([2, 0])])
    assert (len(streamed.train), len(streamed.val), len(streamed.test)) == (9, 5, 9)
    assert "streamed" in repr(streamed.train)
    # code that wants a whole split (analyses) gets it decoded
    assert streamed.test.x.dim() == 4 and streamed.test.x.shape[1] == 3
    assert torch.equal(streamed.eval_transform(streamed.test.x), resident.eval_transform(resident.test.x))


def test_file_images_decode_as_the_decode_once_path(tree: Path) -> None:
    files = sorted((tree / "train" / "ant").glob("*.png"))
    images = FileImages(files, size=20, mode="L")
    x = images[torch.tensor([3, 1])]
    assert x.shape == (2, 1, 20, 20) and x.dtype == torch.uint8
    with Image.open(files[3]) as im:
        want = np.array(im.convert("L").resize((20, 20), Image.Resampling.BILINEAR))
    assert torch.equal(x[0, 0], torch.from_numpy(want))
    sub = images.select(torch.tensor([4, 2]))
    assert len(sub) == 2 and torch.equal(sub[:], images[torch.tensor([4, 2])])
    assert images.to("meta").device == torch.device("meta") and images.device == torch.device("cpu")


def _one_line(fn, *args, **kw) -> str:
    with pytest.raises(DatasetError) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_streaming_mistakes_are_one_line_errors(tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(tree, arcname="tree")
    message = _one_line(load_dataset, "imagefolder", path=str(archive), size=20, stream=True)
    assert "extract" in message and "tree.tar" in message
    assert "needs size" in _one_line(load_dataset, "imagefolder", path=str(tree), stream=True)
    assert "both mean and std" in _one_line(load_dataset, "imagefolder", path=str(tree), size=20,
                                            stream=True, mean=[0.5, 0.5, 0.5])
    assert "one value per channel" in _one_line(load_dataset, "imagefolder", path=str(tree), size=20,
                                                stream=True, mean=[0.5], std=[0.2, 0.2])
    assert "workers" in _one_line(load_dataset, "imagefolder", path=str(tree), size=20, stream=True,
                                  workers=-1)
    assert "crop" in _one_line(load_dataset, "imagefolder", path=str(tree), size=20, crop=21)
    only_val = tmp_path / "imagenet-like"
    only_val.mkdir()
    (only_val / "train").symlink_to(tree / "train")
    (only_val / "val").symlink_to(tree / "test")
    assert "rename it test/" in _one_line(load_dataset, "imagefolder", path=str(only_val), size=20,
                                          stream=True)


def test_explicit_mean_and_std_skip_the_sample(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_mod, "sampled_stats", lambda *a: pytest.fail("sampled the stats"))
    ds = _load(tree, True, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    assert ds.train_transform.mean == (0.5, 0.4, 0.3) and "sampled" not in ds.description


def test_resnet18_imagenet_config_runs_end_to_end(tree: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped config on a tiny tree (40x40 as read, 32x32 crops, batch 4): every rule it
    compares trains one epoch and is tested."""
    cfg = load_config("resnet18-imagenet", [
        f"data.options.path={tree}", "data.options.size=40", "data.options.crop=32",
        "data.options.workers=0", "data.subset=8", "train.epochs=1", "train.batch_size=4",
        "train.eval_batch_size=8",
        "device=cpu",
    ])
    assert cfg.data.options["stream"] is True
    monkeypatch.setenv("FALIGN_THREADS", "1")
    rows = run_compare(cfg, cfg.compare, tmp_path / "runs", log=lambda s: None)
    assert [r.label for r in rows] == ["bp", "fa", "dfa", "usf", "brsf", "frsf"]
    for row in rows:
        record = json.loads((tmp_path / "runs" / row.label / "tracking.json").read_text())
        assert record["status"] == "completed", row.label
        assert record["test_acc"] is not None and len(record["epochs"]) == 1
        assert "streamed" in record["dataset"]


def test_two_processes_on_a_stream_compute_what_one_does(tree: Path, tmp_path: Path, one_process) -> None:
    """torchrun --nproc_per_node 2, each process decoding its shares, ends with the weights of
    one process (float32 sums in another order: within a relative 1e-4 in norm, as
    tests/test_distributed.py holds)."""
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(_train_config(tree, True)))
    env = {**os.environ, **ONE_THREAD, "FALIGN_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "falign", "train", str(cfg), "--out", str(tmp_path / "two")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    for key, value in one_process[True][1].items():
        va, vb = value.double(), two[key].double()
        err = torch.linalg.vector_norm(va - vb) / torch.linalg.vector_norm(va).clamp_min(1e-12)
        assert err <= 1e-4, (key, float(err))
