"""utils.io.authors reading the authors' pickled checkpoints without their code and
without running anything from the file: the attributes, classes and weights their files hold,
the legacy format's details (storage views, GPU storages, strides), and the files it refuses:
booby-trapped pickles, unknown classes and persistent ids, truncated, random or missing files.
The networks rebuilt from those files (same logits, inconsistent files, no authors' code) are in
tests/test_legacy_rebuild.py."""
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

from tests import authors_format as af
from tests.legacy_checkpoints import authors_file, authors_model, stacnas_c10
from utils.io import authors
from utils.pickles import unpickler
from utils.io.authors import (LegacyCheckpointError, load_authors_checkpoint,
                                   read_authors_checkpoint)

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


@pytest.fixture(scope="module")
def c10(tmp_path_factory):
    """An authors'-format network: StacNAS C10 cells, 8 cells, 16 channels, aux head."""
    return stacnas_c10(tmp_path_factory.mktemp("authors"))


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
        model = authors_model(num_cells=3, channels_init=4)
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
        path = authors_file(AugmentCNNImageNet(), tmp_path / "imagenet.pth.tar")
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

