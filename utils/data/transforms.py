"""Transforms of DARTS's code and pt.darts (the code StacNAS builds on): training augmentation,
cutout, normalisation. torchvision is imported inside the functions (about 2 s at startup)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from utils.data.info import MEAN_STD, TRANSFORMS

if TYPE_CHECKING:
    from torchvision import transforms as T


class Cutout:
    """DARTS's cutout: zero one random ``length`` x ``length`` square (clipped at the borders)
    of a CHW tensor, always (probability 1). The centre comes from torch's RNG."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"cutout length must be >= 1, got {length}")
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        y1, x1 = cy - self.length // 2, cx - self.length // 2
        out = img.clone()
        out[..., max(0, y1):max(0, y1 + self.length), max(0, x1):max(0, x1 + self.length)] = 0
        return out

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


def finish_transform(steps: list, mean: Sequence[float], std: Sequence[float], cutout: int) -> T.Compose:
    """``steps`` (on PIL images), then ToTensor, Normalize and Cutout when ``cutout`` > 0."""
    from torchvision import transforms as T
    steps = steps + [T.ToTensor(), T.Normalize(mean, std)]
    if cutout > 0:
        steps.append(Cutout(cutout))
    return T.Compose(steps)


def _augmentation(name: str, auto_aug: bool) -> list:
    """Training-time augmentation on PIL images (DARTS / pt.darts)."""
    from torchvision import transforms as T
    if name in ("cifar10", "cifar100"):
        steps: list = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
        if auto_aug:
            steps.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
        return steps
    steps = [T.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=0.1)]
    if name == "fashionmnist":
        steps.append(T.RandomVerticalFlip())
    return steps


def build_transform(name: str, transform: str, *, cutout: int = 0, auto_aug: bool = False) -> T.Compose:
    """The transform for cifar10/cifar100/mnist/fashionmnist/imagenet; ``transform`` is
    "train" (augmentation, cutout) or "eval" (ToTensor + Normalize; imagenet: resize + crop)."""
    from torchvision import transforms as T
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    if auto_aug and name not in ("cifar10", "cifar100"):
        raise ValueError(f"auto_aug is for cifar10/cifar100 only, not {name}")
    mean, std = MEAN_STD[name]
    if transform == "eval":
        steps = [T.Resize(256), T.CenterCrop(224)] if name == "imagenet" else []
        return finish_transform(steps, mean, std, 0)
    if name == "imagenet":
        steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4, 0.2)]
        return finish_transform(steps, mean, std, cutout)
    return finish_transform(_augmentation(name, auto_aug), mean, std, cutout)

