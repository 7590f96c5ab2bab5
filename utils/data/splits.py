"""Which images a stage uses: the DARTS search split (weights / alphas), the refusal of a split
that leaves a part empty, and ``--subset``."""
from __future__ import annotations

import torch


def split_indices(n: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Split range(n) into round(n * ratio) indices and the rest, shuffled by ``seed``
    (the DARTS search split: weights train on the first part, alphas on the second)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"split ratio must be in (0, 1], got {ratio}")
    if ratio == 1.0:
        return list(range(n)), []
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = round(n * ratio)
    return order[:k], order[k:]


def check_split(train: int, held_out: int, *, flag: str, value: float | None, images: int,
                train_share: bool, held_out_for: str | None = None, processes: int = 1) -> None:
    """Refuse, before any training, a split of `images` images by ``flag value`` (the training
    share when `train_share`, else the held-out share; None: no split) into `train` training
    and `held_out` held-out images that leaves a part empty where it is used: no training
    images, no held-out images while `held_out_for` (the option that uses them) is set, or
    fewer training images than `processes` (each trains on its own share, drop_last). A
    one-line ValueError naming the flag, its value, the sizes and what to change."""
    made_by = (f"{flag} {value} of {images} image{'s' if images != 1 else ''}" if value is not None
               else f"the {images} image{'s' if images != 1 else ''} (--subset or the dataset)")
    sizes = f"{train} training / {held_out} held-out"
    more_images = "or use more images (a larger --subset or dataset)"
    more_train = f"{'raise' if train_share else 'lower'} {flag} {more_images}"
    if train == 0:
        raise ValueError(f"{made_by} leaves no training images ({sizes}); {more_train}")
    if held_out_for and held_out == 0:
        raise ValueError(f"{held_out_for} needs held-out images, but {made_by} leaves none ({sizes}); "
                         f"{'lower' if train_share else 'raise'} {flag} {more_images}")
    if train < processes:
        raise ValueError(f"{made_by} leaves {train} training images for {processes} processes, which "
                         f"need at least one each ({sizes}); {more_train}, or run fewer processes")


def subset_size(n_total: int, subset: int | None) -> int:
    """How many of ``n_total`` items ``--subset N`` keeps (the first ones): N, or all of them
    when there are fewer or without ``--subset`` (None)."""
    if subset is None:
        return n_total
    if subset < 1:
        raise ValueError(f"subset must be >= 1, got {subset}")
    return min(subset, n_total)

