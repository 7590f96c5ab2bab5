"""Small datasets written in their real on-disk formats (CIFAR python pickles, idx ubyte
files, image folders), shared by the tests."""
import gzip
import io
import pickle
import struct

import numpy as np
from PIL import Image

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as the CIFAR files (pickled by Python 2) have:
    they load as str under encoding="latin1" (torchvision) and as bytes under "bytes"."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _write_py2_pickle(path, obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _cifar_batch(rng, n, label_key, num_classes, first_label):
    labels = [(first_label + i) % num_classes for i in range(n)]
    return {b"batch_label": b"fake batch", label_key: labels,
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img%d.png" % i for i in range(n)]}


def make_cifar10(root, per_batch=3, test=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_py2_pickle(folder / f"data_batch_{i}",
                          _cifar_batch(rng, per_batch, b"labels", 10, i))
    _write_py2_pickle(folder / "test_batch", _cifar_batch(rng, test, b"labels", 10, 7))
    _write_py2_pickle(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)],
                                                b"num_cases_per_batch": per_batch,
                                                b"num_vis": 3072})
    return folder


def make_cifar100(root, train=5, test=3):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n, first in (("train", train, 95), ("test", test, 40)):
        batch = _cifar_batch(rng, n, b"fine_labels", 100, first)
        batch[b"coarse_labels"] = [label // 5 for label in batch[b"fine_labels"]]
        _write_py2_pickle(folder / name, batch)
    _write_py2_pickle(folder / "meta", {b"fine_label_names": [b"f%d" % i for i in range(100)],
                                        b"coarse_label_names": [b"c%d" % i for i in range(20)]})
    return folder


def _idx_images(images):
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels):
    return struct.pack(">II", 0x00000801, len(labels)) + bytes(labels)


def make_idx(folder, n_train=6, n_test=4, gz=False):
    """The four idx files (plain, or gzipped as the Debian package ships them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    files = {"train-images-idx3-ubyte": _idx_images(rng.integers(0, 256, (n_train, 28, 28))),
             "train-labels-idx1-ubyte": _idx_labels([i % 10 for i in range(n_train)]),
             "t10k-images-idx3-ubyte": _idx_images(rng.integers(0, 256, (n_test, 28, 28))),
             "t10k-labels-idx1-ubyte": _idx_labels([9 - i % 10 for i in range(n_test)])}
    for name, blob in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return folder


def make_image_folder(root, mode="RGB", size=(12, 10), classes=("cat", "dog", "eel"), per_class=2,
                      splits=("train", "test")):
    rng = np.random.default_rng(3)
    w, h = size
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                shape = (h, w) if mode == "L" else (h, w, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(root / split / cls / f"{i}.png")
    return root


