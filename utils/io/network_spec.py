"""A final network as plain data: the spec checkpoints store (``network`` of augment's
checkpoints; the authors' released files are mapped to it) and the network it rebuilds, its
genotype validated on the way (a spec read from a file names that file)."""
from __future__ import annotations

from models.factory import build_final_network, is_imagenet
from utils.io.genotype_checks import genotype_from_dict, genotype_to_dict


def network_spec(genotype, *, num_classes: int, in_channels: int, input_size: int,
                 init_channels: int, num_cells: int, auxiliary: bool, keep_zero: bool = False,
                 imagenet: bool | None = None) -> dict:
    """Plain data that rebuilds a final network (stored in checkpoints)."""
    return {"kind": "imagenet" if is_imagenet(input_size, imagenet) else "cifar",
            "genotype": genotype_to_dict(genotype), "num_classes": num_classes,
            "in_channels": in_channels, "input_size": input_size, "init_channels": init_channels,
            "num_cells": num_cells, "auxiliary": auxiliary, "keep_zero": keep_zero}


def build_from_spec(spec: dict, source: str = "checkpoint"):
    """The final network a `network_spec` describes (genotype validated)."""
    genotype = genotype_from_dict(spec["genotype"], source)
    return build_final_network(genotype, num_classes=spec["num_classes"],
                               in_channels=spec["in_channels"], input_size=spec["input_size"],
                               init_channels=spec["init_channels"], num_cells=spec["num_cells"],
                               auxiliary=spec["auxiliary"], keep_zero=spec["keep_zero"],
                               imagenet=spec["kind"] == "imagenet",
                               stem_multiplier=spec.get("stem_multiplier", 3))
