"""Datasets held whole on the training device, and fast batch loaders, looked up by name.

    ds = load_dataset("cifar10-jpeg", device="cuda")
    for x, y in batches(ds.train, 128, transform=ds.train_transform, shuffle=True, generator=g):
        ...

Splits store compact tensors (uint8 images); ``ds.train_transform`` / ``ds.eval_transform``
turn a batch into normalised float32 on the same device, augmenting in batch.  An image folder
too large for memory is read with ``stream=True``: its splits hold a `LazyImages` (the files),
which ``batches`` decodes in DataLoader workers into the same batches.
"""

from .core import (
    BatchTransform,
    Dataset,
    DatasetError,
    LazyImages,
    Split,
    batches,
    cache_dir,
    data_root,
    using_data_root,
)
from .fetch import MissingDatasetError
from .registry import available_datasets, download, load_dataset, register_dataset
from .transforms import ImageTransform, ToFloat

__all__ = [
    "BatchTransform",
    "Dataset",
    "DatasetError",
    "ImageTransform",
    "LazyImages",
    "MissingDatasetError",
    "Split",
    "ToFloat",
    "available_datasets",
    "register_dataset",
    "batches",
    "cache_dir",
    "data_root",
    "download",
    "load_dataset",
    "using_data_root",
]
