"""The entry point to every dataset: ``get_dataset`` (a split of a named dataset, with its shape),
and the synthetic dataset the quick runs and tests use."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from utils.data.cifar import CIFAR_FILES, load_cifar
from utils.data.download import Log, log_to_stderr
from utils.data.folders import load_imagefolder, load_imagenet
from utils.data.info import DATASET_INFO, TRANSFORMS, DataError, DatasetInfo, check_name, files_of
from utils.data.mnist import load_mnist
from utils.data.transforms import build_transform


@dataclass(frozen=True)
class SyntheticSpec:
    channels: int = 3
    size: int = 32
    classes: int = 10
    train_size: int = 512
    test_size: int = 256


class SyntheticDataset(Dataset):
    """Random images with a learnable class: a fixed random pattern per class (shared by train
    and test) plus unit Gaussian noise. Deterministic given (train, spec); built once."""
    MEANS_SEED, TRAIN_SEED, TEST_SEED = 1000, 1001, 1002

    def __init__(self, spec: SyntheticSpec, train: bool) -> None:
        shape = (spec.channels, spec.size, spec.size)
        self.means = torch.randn((spec.classes, *shape), generator=torch.Generator().manual_seed(self.MEANS_SEED))
        g = torch.Generator().manual_seed(self.TRAIN_SEED if train else self.TEST_SEED)
        n = spec.train_size if train else spec.test_size
        self.targets = (torch.arange(n) % spec.classes)[torch.randperm(n, generator=g)]
        self.data = self.means[self.targets] + torch.randn((n, *shape), generator=g)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index], int(self.targets[index])




def get_dataset(name: str, data_dir: str, train: bool, transform: str = "train", *, cutout: int = 0,
                auto_aug: bool = False, synthetic: SyntheticSpec | None = None, download: bool = False,
                log: Log | None = None) -> tuple[Dataset, DatasetInfo]:
    """The train (``train=True``) or test split of ``name`` with its shape. ``transform`` is
    "train" (augmentation, plus Cutout(cutout) when > 0; AutoAugment for CIFAR when auto_aug) or
    "eval". Synthetic data ignores the transform arguments. ``download``: fetch CIFAR-10/100,
    MNIST or Fashion-MNIST into data_dir when absent (off by default: library calls never touch
    the network); ``log`` gets the one-line progress notes (default: stderr)."""
    check_name(name)
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    if name == "synthetic":
        spec = synthetic or SyntheticSpec()
        return SyntheticDataset(spec, train), DatasetInfo(spec.channels, spec.size, spec.classes)
    if name == "imagefolder":
        return _not_empty(*load_imagefolder(data_dir, train, transform, cutout), name, train)
    pipeline = build_transform(name, transform, cutout=cutout, auto_aug=auto_aug)
    if name == "imagenet":
        return _not_empty(*load_imagenet(data_dir, train, pipeline), name, train)
    if name in CIFAR_FILES:
        data = load_cifar(name, data_dir, train, pipeline, download, log or log_to_stderr)
    else:
        data = load_mnist(name, data_dir, train, pipeline, download, log or log_to_stderr)
    return _not_empty(data, DATASET_INFO[name], name, train)


def _not_empty(data: Dataset, info: DatasetInfo, name: str, train: bool) -> tuple[Dataset, DatasetInfo]:
    """(data, info), when `data` holds at least one item; otherwise a one-line DataError naming
    where its files are."""
    if len(data) == 0:
        raise DataError(f"{name}: the {'training' if train else 'test'} split holds no images "
                        f"({files_of(data)}); check or replace its files")
    return data, info

