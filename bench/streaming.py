"""Streamed image folders: falign's ``batches`` over files against a plain DataLoader.

    python -m bench.streaming [--quick] [--tree PATH] [--workers N] [--rounds R]

Both read the same JPEG files (a synthetic ImageNet-like class-folder tree written to a
temporary folder, or ``--tree``), decode each image the same way (PIL, RGB, bilinear resize to
``size`` x ``size``) in the same number of worker processes, and apply the dataset's own train
transform (random crop + flip + normalisation, one call per batch) in the main process:

* falign -- ``batches(ds.train, ...)`` of ``load_dataset("imagefolder", stream=True)``: a
  sampler of whole batches, each decoded by one worker (``batch_size=None``);
* plain  -- ``torch.utils.data.DataLoader(dataset, batch_size=B, shuffle=True)`` over a
  per-image ``Dataset`` (each worker fetches a batch image by image and collates it).

Rows: images per second of one epoch (higher is better; ratio falign / plain, interleaved
rounds), and the data-wait share of a training step of a small model (ResNet-8, FA): the time
spent waiting for the next batch over the whole step time, for each loader.  Nothing asserts a
time; on a machine shared with other jobs the ratios are indicative.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._common import Row, format_rows

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_tree(root: Path, classes: int, per_class: int, hw: tuple[int, int], seed: int = 0) -> Path:
    """train/<class>/*.jpg (and a small test/) of smooth random images, JPEG quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for split, n in (("train", per_class), ("test", 2)):
        for c in range(classes):
            folder = root / split / f"c{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
                base = np.sin(xx * fx + phase)[..., None] + np.cos(yy * fy)[..., None] * rng.uniform(-1, 1, 3)
                img = 127.5 + 60 * base + rng.normal(0, 12, (h, w, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg",
                                                                            quality=90)
    return root


class PerImage:
    """The plain baseline's map-style dataset: image i decoded as falign decodes it."""

    def __init__(self, files: list[Path], labels: list[int], size: int) -> None:
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from falign.data.folder import decode_image

        a = decode_image(self.files[i], str(self.files[i]), self.size, "RGB")  # (S, S, 3)
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))), self.labels[i]


def _loaders(ds, batch: int, workers: int, seed: int):
    """Two functions, each returning one epoch's iterator of (x float, y) batches."""
    from torch.utils.data import DataLoader

    from falign.data import batches

    x = ds.train.x
    files = [x.path(i) for i in range(len(x))]
    plain_ds = PerImage(files, ds.train.y.tolist(), x.size)
    gen_f, gen_p, gen_t = (torch.Generator().manual_seed(seed) for _ in range(3))

    def falign_epoch():
        return batches(ds.train, batch, transform=ds.train_transform, shuffle=True, generator=gen_f)

    def plain_epoch():
        loader = DataLoader(plain_ds, batch_size=batch, shuffle=True, num_workers=workers,
                            generator=gen_p, prefetch_factor=2 if workers else None)
        return ((ds.train_transform(xb, gen_t), yb) for xb, yb in loader)

    return {"falign": falign_epoch, "plain": plain_epoch}


def _throughput(epoch) -> float:
    t0 = time.perf_counter()
    n = sum(int(y.shape[0]) for _, y in epoch())
    return n / (time.perf_counter() - t0)


def _wait_share(epoch, model, opt) -> float:
    """Time waiting for batches / time of the whole steps, over one epoch."""
    wait = total = 0.0
    it = iter(epoch())
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        t2 = time.perf_counter()
        wait += t1 - t0
        total += t2 - t0
    return wait / total


def run(quick: bool, *, tree: str | None = None, workers: int | None = None, rounds: int | None = None,
        log=print) -> list[Row]:
    from falign.data import load_dataset
    from falign.models import create_model

    rounds = rounds or (2 if quick else 3)
    size, crop, batch = (64, 56, 32) if quick else (128, 112, 64)
    with tempfile.TemporaryDirectory(prefix="falign-bench-stream-") as tmp:
        if tree is None:
            classes, per_class, hw = (8, 30, (200, 250)) if quick else (10, 80, (375, 500))
            log(f"streaming: writing {classes * per_class} {hw[1]}x{hw[0]} JPEGs")
            root = write_tree(Path(tmp) / "tree", classes, per_class, hw)
        else:
            root = Path(tree)
        ds = load_dataset("imagefolder", path=str(root), stream=True, size=size, crop=crop, flip=True,
                          mean=list(MEAN), std=list(STD), workers=workers)
        w = ds.train.x.workers
        loaders = _loaders(ds, batch, w, seed=0)
        rates: dict[str, list[float]] = {"falign": [], "plain": []}
        shares: dict[str, list[float]] = {"falign": [], "plain": []}
        torch.manual_seed(0)
        model = create_model("resnet", rule="fa", depth=8, num_classes=ds.num_classes,
                             in_shape=ds.input_shape)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for name in loaders:  # first use (imports, page cache) away from the timed rounds
            next(iter(loaders[name]()))
        for r in range(rounds):
            log(f"streaming: round {r + 1}/{rounds}")
            for name in (("plain", "falign") if r % 2 == 0 else ("falign", "plain")):
                rates[name].append(_throughput(loaders[name]))
                shares[name].append(_wait_share(loaders[name], model, opt))
    med = statistics.median
    ratio = med(f / p for f, p in zip(rates["falign"], rates["plain"], strict=True))
    desc = (f"{len(ds.train)} JPEGs -> {size}x{size}, crop {crop} + flip, batch {batch}, {w} worker"
            f"{'' if w == 1 else 's'}, {rounds} rounds")
    return [
        Row("streaming", f"{desc}: images/s of one epoch (higher is better; ratio falign / plain)",
            med(rates["plain"]), med(rates["falign"]), "img/s", ratio, ">= 0.95", ratio >= 0.95),
        Row("streaming", f"{desc}: data-wait share of a ResNet-8 FA training step",
            100 * med(shares["plain"]), 100 * med(shares["falign"]), "%",
            med(shares["falign"]) / max(med(shares["plain"]), 1e-9)),
    ]


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tree", help="a class-folder tree to read (default: a synthetic one)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers (default min(4, cpus // 2))")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    rows = run(args.quick, tree=args.tree, workers=args.workers, rounds=args.rounds)
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
