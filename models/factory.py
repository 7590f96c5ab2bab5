"""Build networks from plain settings: the one place scripts and tools turn a stage name or a
genotype plus the data's shape (classes, input channels, input size) into a model."""
from __future__ import annotations

import genotypes as gt
from models.augment_cnn import FinalNetwork, ImageNetNetwork
from models.search_cnn import SearchNetwork

# The search stages: StacNAS's two (sec. 3) and the one-stage DARTS baseline.
SEARCH_STAGES = ("search1", "search2", "darts")


def stage_candidates(stage: str, num_cells: int, alpha_share: bool = True,
                     stage1_alphas: dict | None = None, groups: dict | None = None) -> dict:
    """Per-edge candidate lists of a search stage.

    search1: the group representatives on every edge; search2: on each edge the members of
    the group stage 1 activated there (needs `stage1_alphas`; sharing follows that file);
    darts: the 8 DARTS ops on every edge.
    """
    groups = groups or gt.GROUPS
    if stage == "search1":
        ops = gt.stage1_primitives(groups)
    elif stage == "darts":
        ops = list(gt.PRIMITIVES)
    elif stage == "search2":
        if stage1_alphas is None:
            raise ValueError("search2 needs the alphas.json of search1")
        return gt.candidates_from_stage1(stage1_alphas, groups)
    else:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(SEARCH_STAGES)}")
    return gt.uniform_candidates(ops, gt.set_names(num_cells, alpha_share))


def build_supernet(candidates: dict, *, num_classes: int, in_channels: int, input_size: int,
                   init_channels: int, num_cells: int, auxiliary: bool = False) -> SearchNetwork:
    return SearchNetwork(candidates, num_classes, in_channels=in_channels,
                         init_channels=init_channels, num_cells=num_cells,
                         auxiliary=auxiliary, input_size=input_size)


def is_imagenet(input_size: int, imagenet: bool | None = None) -> bool:
    """Whether a final network takes the ImageNet mobile form: as asked, else for inputs of
    128 pixels and more."""
    return input_size >= 128 if imagenet is None else imagenet


def build_final_network(genotype, *, num_classes: int, in_channels: int, input_size: int,
                        init_channels: int, num_cells: int, auxiliary: bool = False,
                        keep_zero: bool = False, imagenet: bool | None = None,
                        stem_multiplier: int = 3):
    """ImageNet mobile network for large inputs (or when `imagenet` is True), else CIFAR-style."""
    kwargs = dict(num_classes=num_classes, init_channels=init_channels, num_cells=num_cells,
                  auxiliary=auxiliary, in_channels=in_channels, input_size=input_size,
                  keep_zero=keep_zero)
    if is_imagenet(input_size, imagenet):
        return ImageNetNetwork(genotype, **kwargs)
    return FinalNetwork(genotype, stem_multiplier=stem_multiplier, **kwargs)
