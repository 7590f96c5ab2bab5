"""Datasets: what each one looks like (channels, input size, classes), and their loaders."""
from __future__ import annotations

from typing import NamedTuple


class DatasetInfo(NamedTuple):
    channels: int
    size: int
    classes: int


# Shapes of the built-in datasets, known without touching the data.
DATASET_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(3, 32, 10),
    "cifar100": DatasetInfo(3, 32, 100),
    "mnist": DatasetInfo(1, 28, 10),
    "fashionmnist": DatasetInfo(1, 28, 10),
    "imagenet": DatasetInfo(3, 224, 1000),
    "synthetic": DatasetInfo(3, 32, 10),
}


def dataset_info(name: str) -> DatasetInfo:
    """Shape of a built-in dataset; an unknown name is a ValueError listing the known ones."""
    try:
        return DATASET_INFO[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_INFO)}") from None
