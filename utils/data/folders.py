"""Image folders (one folder per class under train/ and test/ or val/) and ImageNet (ILSVRC2012 laid
out the same way): never downloaded; a missing folder or an unreadable first image is a one-line
DataError saying where it was looked for and how to lay the files out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from PIL import Image
from torch.utils.data import Dataset

from utils.data.info import IMAGE_FIX, DataError, DatasetInfo, reason
from utils.data.transforms import finish_transform

# torchvision is imported inside the functions that build datasets, not here: importing it
# takes about 2 s, which every script would pay at startup (even for --help).
if TYPE_CHECKING:
    from torchvision import datasets


def _class_dir(root: Path, name: str, how: str) -> tuple[list[str], dict[str, int]]:
    from torchvision.datasets.folder import find_classes
    try:
        return find_classes(str(root))
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{name} not found: looked for {root}/<class>/<images>; it is never "
                        f"downloaded — {how}") from None


def _first_image(root: Path, classes: list[str]) -> Path:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    for cls in classes:
        for dirpath, _, files in sorted(os.walk(root / cls)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    return Path(dirpath) / f
    raise DataError(f"imagefolder has no images: looked in {root}/<class>/ for {', '.join(IMG_EXTENSIONS)}")


class _ModeLoader:
    """Picklable PIL loader converting images to one mode (for DataLoader workers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Image.Image:
        with open(path, "rb") as f:
            return Image.open(f).convert(self.mode)


def _image_folder(split: Path, name: str, how: str, **kwargs: Any) -> datasets.ImageFolder:
    from torchvision import datasets
    try:
        return datasets.ImageFolder(str(split), **kwargs)
    except FileNotFoundError as err:
        raise DataError(f"{name} not found: {err} (looked in {split}); {how}") from None


_FOLDER_HOW = "put one folder per class of images under {root}/train and {root}/test (or val)"


def _folder_split(data_dir: str, train: bool) -> Path:
    root = Path(data_dir)
    if train:
        return root / "train"
    return root / "test" if (root / "test").is_dir() or not (root / "val").is_dir() else root / "val"


def _imagefolder_info(data_dir: str) -> DatasetInfo:
    """Channels and size from the first training image, classes from the folders; an image
    PIL cannot open is a one-line DataError naming it."""
    train_dir = Path(data_dir) / "train"
    classes, _ = _class_dir(train_dir, "imagefolder", _FOLDER_HOW.format(root=data_dir))
    first = _first_image(train_dir, classes)
    try:
        with Image.open(first) as img:
            return DatasetInfo(1 if img.mode == "L" else 3, img.height, len(classes))
    except Exception as err:  # PIL: UnidentifiedImageError, OSError, DecompressionBombError...
        raise DataError(f"{first}: not a readable image ({reason(err)}); {IMAGE_FIX}") from None


def load_imagefolder(data_dir: str, train: bool, transform: str, cutout: int) -> tuple[Dataset, DatasetInfo]:
    from torchvision import transforms as T
    from torchvision.datasets.folder import find_classes
    info = _imagefolder_info(data_dir)
    split = _folder_split(data_dir, train)
    classes, _ = _class_dir(split, "imagefolder", _FOLDER_HOW.format(root=data_dir))
    train_classes, _ = find_classes(str(Path(data_dir) / "train"))
    if classes != train_classes:
        raise DataError(f"imagefolder: {split} has classes {classes}, train has {train_classes}")
    steps: list = [T.Resize((info.size, info.size))]
    if transform == "train":
        steps.append(T.RandomHorizontalFlip())
    pipeline = finish_transform(steps, [0.5] * info.channels, [0.5] * info.channels, cutout if transform == "train" else 0)
    loader = _ModeLoader("L" if info.channels == 1 else "RGB")
    data = _image_folder(split, "imagefolder", _FOLDER_HOW.format(root=data_dir), transform=pipeline, loader=loader)
    return data, info


_IMAGENET_HOW = "put ILSVRC2012 (https://image-net.org) there as one folder per class under train/ and val/"


def load_imagenet(data_dir: str, train: bool, transform: Callable) -> tuple[Dataset, DatasetInfo]:
    split = Path(data_dir) / ("train" if train else "val")
    _class_dir(split, "imagenet", _IMAGENET_HOW)
    data = _image_folder(split, "imagenet", _IMAGENET_HOW, transform=transform)
    return data, DatasetInfo(3, 224, len(data.classes))

