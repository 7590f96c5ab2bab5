"""What each dataset looks like (channels, input size, classes, normalisation), known without
touching the data, and the one error every reader raises: a one-line ``DataError``."""
from __future__ import annotations

import os
from typing import NamedTuple

from torch.utils.data import Dataset


class DatasetInfo(NamedTuple):
    channels: int
    size: int
    classes: int

    def network_shape(self) -> dict[str, int]:
        """The data's shape as the network builders of models.factory take it."""
        return {"num_classes": self.classes, "in_channels": self.channels, "input_size": self.size}


# Shapes of the built-in datasets, known without touching the data.
DATASET_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(3, 32, 10),
    "cifar100": DatasetInfo(3, 32, 100),
    "mnist": DatasetInfo(1, 28, 10),
    "fashionmnist": DatasetInfo(1, 28, 10),
    "imagenet": DatasetInfo(3, 224, 1000),
    "synthetic": DatasetInfo(3, 32, 10),
}

DATASETS = ("cifar10", "cifar100", "mnist", "fashionmnist", "imagenet", "imagefolder", "synthetic")
TRANSFORMS = ("train", "eval")

MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.50707519, 0.48654887, 0.44091785), (0.26733428, 0.25643846, 0.27615049)),
    "mnist": ((0.13066051707548254,), (0.30810780244715075,)),
    "fashionmnist": ((0.28604063,), (0.35302426,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class DataError(RuntimeError):
    """A dataset is not on disk (nor could be downloaded); the message says what, where it
    looked (or which URL failed) and how to get it."""


def dataset_info(name: str) -> DatasetInfo:
    """Shape of a built-in dataset; an unknown name is a ValueError listing the known ones."""
    try:
        return DATASET_INFO[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_INFO)}") from None


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# What to do about an image of a folder that cannot be read (image folders, loaders).
IMAGE_FIX = "replace it or remove it from the folder"


def reason(err: BaseException) -> str:
    """One short line describing `err`."""
    text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def files_of(dataset: Dataset) -> str:
    """Where `dataset`'s files are (a folder), for messages; its class name when not known."""
    folder = getattr(dataset, "raw_folder", None)
    if folder is None and hasattr(dataset, "base_folder") and hasattr(dataset, "root"):
        folder = os.path.join(dataset.root, dataset.base_folder)
    if folder is None:
        folder = getattr(dataset, "root", None)
    return str(folder) if folder is not None else type(dataset).__name__
