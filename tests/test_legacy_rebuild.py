"""The authors' checkpoints rebuilt as our FinalNetwork by utils.io.authors: the same
logits as the authors' network (StacNAS C10, DARTS V2 in other shapes, per-cell genotypes, in
training mode with the aux head, resaved in the zip format, through a network spec), files
whose structure contradicts itself refused with one line naming the field, and the rebuild in a
fresh interpreter that has neither the authors' modules nor torch.load. Reading the files
(attributes, format details, refusals, damaged files) is in tests/test_legacy.py."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import genotypes as gt
from tests import authors_format as af
from tests.legacy_checkpoints import authors_file, authors_model, stacnas_c10
from utils.io import genotype_checks as gchecks
from utils.io import authors
from utils.io.authors import (LegacyCheckpointError, load_authors_checkpoint,
                                   read_authors_checkpoint)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def c10(tmp_path_factory):
    """An authors'-format network: StacNAS C10 cells, 8 cells, 16 channels, aux head."""
    return stacnas_c10(tmp_path_factory.mktemp("authors"))


def _same_logits(ours, theirs, shape, seed=0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = theirs.eval()(x)[0]
        got = ours(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


# ----------------------------------------------------------------------------- same logits
def test_stacnas_c10_logits(c10):
    model, path = c10
    net = load_authors_checkpoint(path)
    assert not net.training and len(net.cells) == 8 and net.aux_head is not None
    _same_logits(net, model, (4, 3, 32, 32))


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (3, 3, 32, 32)),
    ({"channels_in": 1, "input_size": 28, "auxiliary": True}, (3, 1, 28, 28)),
    ({"num_classes": 7, "auxiliary": False, "channels_init": 6}, (2, 3, 32, 32))])
def test_darts_v2_logits(tmp_path, kwargs, shape):
    model = authors_model(gt.DARTS_V2, **kwargs)
    net = load_authors_checkpoint(authors_file(model, tmp_path / "m.pth.tar"))
    _same_logits(net, model, shape, seed=1)


def test_per_cell_genotypes_logits(tmp_path):
    red = gt.reduction_cells(5)
    pick = [gt.DARTS_V2.reduce if i in red else (gt.DARTS_V1.normal, gt.STACNAS_C10.normal)[i % 2]
            for i in range(5)]
    model = af.make_authors_model(None, None, cell_genotypes=[af.to_nested(g) for g in pick])
    path = authors_file(model, tmp_path / "m.pth.tar")
    assert read_authors_checkpoint(path)["alpha_share"] is False
    net = load_authors_checkpoint(path)
    assert isinstance(net.cells[0], nn.Module) and net.cells[0].inputs[3] == [0, 2]
    _same_logits(net, model, (2, 3, 32, 32))


def test_training_mode_logits_and_aux_logits(c10):
    model, path = c10
    net = load_authors_checkpoint(path).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, aux = net(x)
        theirs = af.make_authors_model(af.to_nested(gt.STACNAS_C10.normal),
                                       af.to_nested(gt.STACNAS_C10.reduce), channels_init=16,
                                       num_cells=8)
        theirs.load_state_dict(model.state_dict())
        ref_logits, ref_aux = theirs.train()(x)
    assert torch.allclose(logits, ref_logits, atol=1e-4)
    assert torch.allclose(aux, ref_aux, atol=1e-4)


def test_resaved_zip_format_loads(c10, tmp_path):
    model, _ = c10
    path = tmp_path / "resaved.pth.tar"
    torch.save(model, path)
    assert zipfile.is_zipfile(path)
    _same_logits(load_authors_checkpoint(path), model, (2, 3, 32, 32))


def test_network_spec_rebuilds_the_same_network(c10):
    from utils.io.network_spec import build_from_spec
    model, path = c10
    net, spec = authors.load_authors_network(path)
    assert spec["kind"] == "cifar" and spec["stem_multiplier"] == 3
    assert (spec["in_channels"], spec["input_size"], spec["num_classes"]) == (3, 32, 10)
    assert gchecks.genotype_from_dict(spec["genotype"]) == gt.STACNAS_C10
    rebuilt = build_from_spec(spec)
    rebuilt.load_state_dict(net.state_dict())
    _same_logits(rebuilt.eval(), model, (2, 3, 32, 32))


# ----------------------------------------------------------------------------- structure
def _small():
    return authors_model(num_cells=3, channels_init=4)


def _break(model, how):
    if how == "genotypes":
        del model._genotypes
    elif how == "edge_id":
        model._cells[0]._dag[1][0].edge_id = 1
    elif how == "channels":
        model._channels_init = 6
    elif how == "weights":
        model._classifier.weight = nn.Parameter(torch.zeros(10, 5))
    elif how == "pool":
        model._cells[1]._dag[0][1][0].pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
    elif how == "aux_pos":
        model._aux_pos = 1
    elif how == "op":
        model._genotypes[0][1][0] = ("conv_3x3", 0)  # the normal cells share this list
    return model


@pytest.mark.parametrize("how, expected", [
    ("genotypes", "unexpected structure: the augment_cnn.AugmentCNN has no attribute "
                  "'_genotypes'"),
    ("edge_id", r"_cells.0._dag.1.0.edge_id = 1 but the cell's genotype has 0"),
    ("channels", r"the authors' _stem.0.out_channels is 12, our stem.0.out_channels 18"),
    ("weights", r"weights do not fit the rebuilt network: the file's _classifier.weight is "
                r"\(10, 5\), our classifier.weight \(10, 64\)"),
    ("pool", r"_cells.1._dag.0.1.0.pool is a AvgPool2d, our cells.1.nodes.0.1.pool a MaxPool2d"),
    ("aux_pos", "auxiliary head after cell 1"),
    ("op", r"normal\[2\]: unknown op 'conv_3x3'")])
def test_inconsistent_files(tmp_path, how, expected):
    path = authors_file(_break(_small(), how), tmp_path / "bad.pth.tar")
    with pytest.raises(LegacyCheckpointError, match=expected) as err:
        load_authors_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_top_level_object_must_be_an_augment_cnn(tmp_path):
    path = authors_file(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), tmp_path / "seq.pth.tar")
    with pytest.raises(LegacyCheckpointError,
                       match="top-level object is a torch.nn.modules.container.Sequential"):
        load_authors_checkpoint(path)


# ----------------------------------------------------------------------------- no authors' code
@pytest.mark.e2e
def test_loads_without_the_authors_modules(c10, tmp_path):
    """A fresh interpreter that cannot import augment_cnn/cells/operators (nor the fixtures),
    and whose torch.load raises, rebuilds the network with the same logits."""
    model, path = c10
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)[0]
    torch.save({"x": x, "logits": expected}, tmp_path / "expected.pt")
    script = f"""
import importlib.util, sys, torch
expected = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)
def no_load(*args, **kwargs):
    raise AssertionError("torch.load called")
torch.load = no_load
names = ("augment_cnn", "cells", "operators")
assert all(importlib.util.find_spec(n) is None for n in names)
from utils.io.authors import load_authors_checkpoint
net = load_authors_checkpoint({str(path)!r})
with torch.no_grad():
    got = net(expected["x"])
assert torch.allclose(got, expected["logits"], atol=1e-5), (got - expected["logits"]).abs().max()
assert not any(n in sys.modules for n in names + ("tests.authors_format", "authors_format"))
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
