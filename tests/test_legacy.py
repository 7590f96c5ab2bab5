"""utils.pickles.authors: the authors' pickled checkpoints are read without their code and without
running anything from the file, and rebuilt as our FinalNetwork with the same logits."""
import os
import pickle
import random
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import genotypes as gt
from utils.pickles import authors, unpickler
from utils.pickles.authors import (LegacyCheckpointError, load_authors_checkpoint,
                                   read_authors_checkpoint)
from tests import authors_format as af
from utils.io import genotype_checks as gchecks

ROOT = Path(__file__).resolve().parents[1]

# The classes an authors' checkpoint pickles, counted (8 cells, 16 channels, aux, StacNAS C10)
DOC_CLASS_COUNTS = {
    "augment_cnn.AugmentCNN": 1, "augment_cnn.AuxiliaryHead": 1, "cells.AugmentCell": 8,
    "operators.DilConv": 82, "operators.DropPath": 52, "operators.FactorizedReduce": 4,
    "operators.Identity": 12, "operators.PoolBN": 6, "operators.SepConv": 38,
    "operators.StdConv": 14, "torch.nn.modules.activation.ReLU": 103,
    "torch.nn.modules.batchnorm.BatchNorm2d": 109, "torch.nn.modules.container.ModuleList": 41,
    "torch.nn.modules.container.Sequential": 188, "torch.nn.modules.conv.Conv2d": 189,
    "torch.nn.modules.linear.Linear": 2, "torch.nn.modules.pooling.AdaptiveAvgPool2d": 1,
    "torch.nn.modules.pooling.AvgPool2d": 5, "torch.nn.modules.pooling.MaxPool2d": 2}
DOC_SHAPES = {
    "_stem.0.weight": (48, 3, 3, 3), "_stem.1.num_batches_tracked": (),
    "_cells.0._preproc0._ops.1.weight": (16, 48, 1, 1),
    "_cells.0._dag.0.0.0._ops.0._ops.1.weight": (16, 1, 3, 3),
    "_cells.0._dag.0.0.0._ops.1._ops.3.running_var": (16,),
    "_cells.0._dag.3.1.0._ops.1._ops.2.weight": (16, 16, 1, 1),
    "_cells.2._preproc0._ops.1.weight": (32, 64, 1, 1),
    "_cells.2._dag.0.0.0.conv1.weight": (16, 32, 1, 1),
    "_cells.2._dag.0.0.0.bn.weight": (32,), "_cells.2._dag.0.1.0.bn.running_mean": (32,),
    "_cells.2._dag.1.0.0._ops.1.weight": (32, 1, 5, 5),
    "_cells.2._dag.3.1.0._ops.1._ops.2.weight": (32, 32, 1, 1),
    "_aux_head._features.2.weight": (128, 256, 1, 1), "_aux_head._features.6.bias": (768,),
    "_aux_head._features.5.weight": (768, 128, 2, 2), "_aux_head._classifier.weight": (10, 768),
    "_classifier.weight": (10, 256), "_classifier.bias": (10,)}


def _authors(genotype=gt.STACNAS_C10, **kwargs):
    return af.make_authors_model(af.to_nested(genotype.normal), af.to_nested(genotype.reduce),
                                 **kwargs)


def _saved(model, path):
    af.save_like_authors(model, path)
    return path


@pytest.fixture(scope="module")
def c10(tmp_path_factory):
    """An authors'-format network: StacNAS C10 cells, 8 cells, 16 channels, aux head."""
    model = _authors(channels_init=16, num_cells=8)
    return model, _saved(model, tmp_path_factory.mktemp("authors") / "cifar10.pth.tar")


def _same_logits(ours, theirs, shape, seed=0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = theirs.eval()(x)[0]
        got = ours(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


# ----------------------------------------------------------------------------- reading
def test_fixture_is_the_legacy_format_with_module_source(c10):
    _, path = c10
    data = path.read_bytes()
    assert not zipfile.is_zipfile(path)
    assert data.startswith(b"\x80\x02\x8a\x0a") and b"class AugmentCNN" in data


def test_reads_documented_attributes(c10):
    _, path = c10
    info = read_authors_checkpoint(path)
    assert {k: info[k] for k in ("input_size", "channels_in", "channels_init", "num_cells",
                                 "num_nodes", "num_classes", "stem_multiplier", "auxiliary",
                                 "aux_pos", "alpha_share")} == {
        "input_size": 32, "channels_in": 3, "channels_init": 16, "num_cells": 8, "num_nodes": 4,
        "num_classes": 10, "stem_multiplier": 3, "auxiliary": True, "aux_pos": 5,
        "alpha_share": True}
    assert info["genotypes"][0] == [[("sep_conv_3x3", 1), ("skip_connect", 0)],
                                    [("skip_connect", 0), ("sep_conv_3x3", 2)],
                                    [("sep_conv_3x3", 1), ("sep_conv_3x3", 0)],
                                    [("sep_conv_3x3", 2), ("sep_conv_3x3", 0)]]
    assert info["genotypes"][1][3] == [("dil_conv_5x5", 3), ("sep_conv_5x5", 0)]
    assert info["class_counts"] == DOC_CLASS_COUNTS
    cell = info["cells"][2]
    assert (cell["reduction"], cell["reduction_prev"], cell["channels"]) == (True, False, 32)
    assert cell["edge_ids"] == [[1, 0], [2, 0], [3, 0], [3, 0]]
    shapes = {k: tuple(v.shape) for k, v in info["state_dict"].items()}
    assert {k: shapes.get(k) for k in DOC_SHAPES} == DOC_SHAPES
    assert info["state_dict"]["_stem.1.num_batches_tracked"].dtype == torch.int64


def test_state_dict_equals_the_original(c10):
    model, path = c10
    state = read_authors_checkpoint(path)["state_dict"]
    expected = model.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


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
    model = _authors(gt.DARTS_V2, **kwargs)
    net = load_authors_checkpoint(_saved(model, tmp_path / "m.pth.tar"))
    _same_logits(net, model, shape, seed=1)


def test_per_cell_genotypes_logits(tmp_path):
    red = gt.reduction_cells(5)
    pick = [gt.DARTS_V2.reduce if i in red else (gt.DARTS_V1.normal, gt.STACNAS_C10.normal)[i % 2]
            for i in range(5)]
    model = af.make_authors_model(None, None, cell_genotypes=[af.to_nested(g) for g in pick])
    path = _saved(model, tmp_path / "m.pth.tar")
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


# ----------------------------------------------------------------------------- refusals
class _Trap:
    """Pickles as a call of `func(*args)`: what an attacker would put in a file."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path):
    return [(os.system, (f"touch {marker}",), "system"),
            (eval, (f"__import__('os').system('touch {marker}')",), "builtins.eval"),
            (subprocess.Popen, (["touch", str(marker)],), "subprocess.Popen")]


@pytest.mark.parametrize("index", range(3))
@pytest.mark.parametrize("where", ["whole file", "legacy model", "zip model"])
@pytest.mark.e2e
def test_booby_trapped_files_are_refused(tmp_path, index, where):
    marker = tmp_path / "pwned"
    func, args, name = _payloads(marker)[index]
    path = tmp_path / "authors.pth.tar"
    if where == "whole file":
        path.write_bytes(pickle.dumps(_Trap(func, args), protocol=2))
    else:
        model = _authors(num_cells=3, channels_init=4)
        model._cells[1]._payload = _Trap(func, args)
        if where == "zip model":
            torch.save(model, path)
        else:
            af.save_like_authors(model, path)
    with pytest.raises(LegacyCheckpointError) as err:
        load_authors_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refusing to load") and "nothing from it was run" in message
    assert name in message and "\n" not in message
    if name == "system":
        assert "posix.system" in message or "os.system" in message
    assert not marker.exists()


class AugmentCNNImageNet(nn.Module):
    """A class of the authors' module that the loader does not know (their ImageNet model)."""
    __module__ = "augment_cnn"

    def __init__(self):
        super().__init__()
        self._stem = nn.Conv2d(3, 4, 3)


def test_unknown_class_in_an_authors_module_is_refused(tmp_path):
    af.install_authors_modules()
    sys.modules["augment_cnn"].AugmentCNNImageNet = AugmentCNNImageNet
    try:
        path = _saved(AugmentCNNImageNet(), tmp_path / "imagenet.pth.tar")
    finally:
        del sys.modules["augment_cnn"].AugmentCNNImageNet
    with pytest.raises(LegacyCheckpointError, match="'augment_cnn.AugmentCNNImageNet'"):
        load_authors_checkpoint(path)


def test_unknown_persistent_id_is_refused(tmp_path):
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("module_source", "exec me") if obj == "hook" else None

    path = tmp_path / "pid.pth.tar"
    with open(path, "wb") as f:
        for header in (unpickler.MAGIC_NUMBER, unpickler.PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump({"x": "hook"})
    with pytest.raises(LegacyCheckpointError, match="refusing to load: .*persistent id"):
        read_authors_checkpoint(path)


def test_allowed_globals_are_the_documented_classes_and_tensor_internals():
    allowed = unpickler.ALLOWED_GLOBALS
    assert set(DOC_CLASS_COUNTS) <= allowed
    assert {"torch._utils._rebuild_tensor_v2", "torch.FloatStorage", "torch.LongStorage",
            "collections.OrderedDict"} <= allowed
    assert not {"builtins.eval", "posix.system", "os.system", "subprocess.Popen",
                "builtins.getattr", "torch.load", "copyreg._reconstructor"} & allowed


# ----------------------------------------------------------------------------- format details
class _Storage:
    def __init__(self, *pid):
        self.pid = ("storage", *pid)


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def _write_legacy(path, obj, storages):
    """A legacy file as PyTorch 1.x wrote it, including what 2.x no longer writes: storage
    views (view metadata) and GPU storages."""
    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            return o.pid if isinstance(o, _Storage) else None

    with open(path, "wb") as f:
        for header in (unpickler.MAGIC_NUMBER, unpickler.PROTOCOL_VERSION,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(obj)
        pickle.dump(sorted(storages), f, protocol=2)
        for key in sorted(storages):
            f.write(struct.pack("<q", storages[key].numel()) + storages[key].numpy().tobytes())


def test_storage_views_gpu_storages_and_strides(tmp_path):
    data = torch.arange(12, dtype=torch.float32)
    root = _Storage(torch.cuda.FloatStorage, "7", "cuda:0", 12, None)
    view = _Storage(torch.cuda.FloatStorage, "7", "cuda:0", 12, ("7v", 4, 6))
    longs = _Storage(torch.LongStorage, "9", "cpu", 1)
    obj = {"view": _Tensor(view, 0, (2, 3), (3, 1)), "t": _Tensor(root, 1, (3, 2), (1, 3)),
           "n": _Tensor(longs, 0, (), ())}
    path = tmp_path / "v1.pth.tar"
    _write_legacy(path, obj, {"7": data, "9": torch.tensor([42])})
    refs, storages, source = unpickler.read_objects(path)
    got = {k: authors._materialise(r, storages, source, k) for k, r in refs.items()}
    assert torch.equal(got["view"], data[4:10].view(2, 3))
    assert torch.equal(got["t"], data.as_strided((3, 2), (1, 3), 1))
    assert got["n"].dtype == torch.int64 and got["n"].item() == 42
    obj["bad"] = _Tensor(view, 4, (2, 3), (3, 1))
    _write_legacy(path, obj, {"7": data, "9": torch.tensor([42])})
    refs, storages, source = unpickler.read_objects(path)
    with pytest.raises(LegacyCheckpointError, match="tensor bad reaches past its storage"):
        authors._materialise(refs["bad"], storages, source, "bad")


# ----------------------------------------------------------------------------- damaged files
def test_truncated_files(c10, tmp_path):
    _, path = c10
    data = path.read_bytes()
    for name, cut in [("half", len(data) // 2), ("pickle", 5000), ("tail", len(data) - 3)]:
        bad = tmp_path / f"{name}.pth.tar"
        bad.write_bytes(data[:cut])
        with pytest.raises(LegacyCheckpointError, match="truncated") as err:
            load_authors_checkpoint(bad)
        assert str(err.value).startswith(f"{bad}: ")


@pytest.mark.parametrize("content", [random.Random(0).randbytes(4096), b"",
                                     pickle.dumps(12345, protocol=2), b"PK\x03\x04garbage"])
def test_not_a_torch_file(tmp_path, content):
    bad = tmp_path / "random.pth.tar"
    bad.write_bytes(content)
    with pytest.raises(LegacyCheckpointError) as err:
        load_authors_checkpoint(bad)
    assert str(err.value).startswith(f"{bad}: ")
    if content[:2] != b"PK":
        assert "bad magic number" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(LegacyCheckpointError, match="nope.pth.tar: cannot read"):
        load_authors_checkpoint(tmp_path / "nope.pth.tar")


# ----------------------------------------------------------------------------- structure
def _small():
    return _authors(num_cells=3, channels_init=4)


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
    path = _saved(_break(_small(), how), tmp_path / "bad.pth.tar")
    with pytest.raises(LegacyCheckpointError, match=expected) as err:
        load_authors_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_top_level_object_must_be_an_augment_cnn(tmp_path):
    path = _saved(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), tmp_path / "seq.pth.tar")
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
from utils.pickles.authors import load_authors_checkpoint
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
