"""The authors'-format checkpoints that tests/test_legacy.py (reading them) and
tests/test_legacy_rebuild.py (the networks rebuilt from them) write: tests/authors_format.py's
stand-in for the authors' AugmentCNN, built with one of our genotypes and saved as the authors
saved theirs."""
import genotypes as gt
from tests import authors_format as af


def authors_model(genotype=gt.STACNAS_C10, **kwargs):
    return af.make_authors_model(af.to_nested(genotype.normal), af.to_nested(genotype.reduce),
                                 **kwargs)


def authors_file(model, path):
    af.save_like_authors(model, path)
    return path


def stacnas_c10(folder):
    """(model, its file in `folder`): an authors'-format network with StacNAS C10 cells, 8
    cells, 16 channels and an aux head, like their cifar10.pth.tar."""
    model = authors_model(channels_init=16, num_cells=8)
    return model, authors_file(model, folder / "cifar10.pth.tar")
