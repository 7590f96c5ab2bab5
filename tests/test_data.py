"""utils/data/ on small fakes written in the real on-disk formats (CIFAR python pickles,
idx ubyte files, image folders), plus synthetic data, Cutout, splits and loaders. CPU only."""
import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from utils.data import datasets as D, info as DI, loaders as LD, mnist as DM
from utils.data import splits as DS, transforms as DT
from utils.data.datasets import SyntheticSpec
from utils.data.info import DataError, DatasetInfo


from tests.fakes import make_cifar10, make_cifar100, make_idx, make_image_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_system_data(tmp_path, monkeypatch):
    """Never read the real system copy or the home cache from a test."""
    monkeypatch.setattr(DM, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-dir"))
    monkeypatch.setattr(DM, "CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("train,length,labels", [(True, 15, [1, 2, 3]), (False, 4, [7, 8, 9, 0])])
def test_cifar10_real_format(tmp_path, train, length, labels):
    make_cifar10(tmp_path)
    ds, info = D.get_dataset("cifar10", str(tmp_path), train=train, transform="eval")
    assert info == DatasetInfo(3, 32, 10) and len(ds) == length
    assert [ds[i][1] for i in range(len(labels))] == labels
    img, _ = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert ds.classes[:2] == ["c0", "c1"]


def test_fake_cifar_pickles_load_like_the_real_ones(tmp_path):
    blob = (make_cifar10(tmp_path) / "data_batch_1").read_bytes()
    as_bytes = pickle.loads(blob, encoding="bytes")  # the CIFAR page's unpickle()
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (3, 3072)
    assert as_bytes[b"labels"] == [1, 2, 3]
    assert set(pickle.loads(blob, encoding="latin1")) >= {"data", "labels"}  # torchvision's


def test_cifar10_eval_normalises_the_stored_pixels(tmp_path):
    folder = make_cifar10(tmp_path)
    raw = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")[b"data"][0]
    ds, _ = D.get_dataset("cifar10", str(tmp_path), train=False, transform="eval")
    mean, std = torch.tensor(DI.MEAN_STD["cifar10"][0]), torch.tensor(DI.MEAN_STD["cifar10"][1])
    expected = ((torch.from_numpy(raw.reshape(3, 32, 32)).float() / 255 - mean[:, None, None])
                / std[:, None, None])
    assert torch.allclose(ds[0][0], expected, atol=1e-5)


def test_cifar100_fine_labels_and_train_transform(tmp_path):
    make_cifar100(tmp_path)
    ds, info = D.get_dataset("cifar100", str(tmp_path), train=True, cutout=8)
    assert info == DatasetInfo(3, 32, 100) and len(ds) == 5
    assert [ds[i][1] for i in range(5)] == [95, 96, 97, 98, 99]
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize", "Cutout"]
    assert ds[0][0].shape == (3, 32, 32)
    test, _ = D.get_dataset("cifar100", str(tmp_path), train=False)
    assert len(test) == 3 and test[0][1] == 40


def test_auto_augment_inserts_torchvisions_policy(tmp_path):
    make_cifar10(tmp_path)
    ds, _ = D.get_dataset("cifar10", str(tmp_path), train=True, auto_aug=True)
    autos = [t for t in ds.transform.transforms if isinstance(t, T.AutoAugment)]
    assert len(autos) == 1 and autos[0].policy == T.AutoAugmentPolicy.CIFAR10
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names.index("AutoAugment") < names.index("ToTensor")
    torch.manual_seed(0)
    assert ds[0][0].shape == (3, 32, 32)
    plain, _ = D.get_dataset("cifar10", str(tmp_path), train=True)
    assert not any(isinstance(t, T.AutoAugment) for t in plain.transform.transforms)
    with pytest.raises(ValueError, match="auto_aug"):
        DT.build_transform("mnist", "train", auto_aug=True)


def test_missing_cifar_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        D.get_dataset("cifar10", str(tmp_path), train=True)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "cifar-10-batches-py") in msg and "kriz/cifar" in msg
    folder = make_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_1..5"):
        D.get_dataset("cifar10", str(tmp_path), train=False)


# ---------------------------------------------------------------------- MNIST / Fashion

def test_mnist_reads_raw_idx(tmp_path):
    make_idx(tmp_path / "MNIST" / "raw")
    ds, info = D.get_dataset("mnist", str(tmp_path), train=True, transform="eval")
    assert info == DatasetInfo(1, 28, 10) and len(ds) == 6
    assert [ds[i][1] for i in range(6)] == [0, 1, 2, 3, 4, 5]
    assert ds[0][0].shape == (1, 28, 28)
    test, _ = D.get_dataset("mnist", str(tmp_path), train=False)
    assert len(test) == 4 and test[0][1] == 9 and test[0][0].shape == (1, 28, 28)


def test_fashionmnist_train_transform(tmp_path):
    make_idx(tmp_path / "FashionMNIST" / "raw")
    ds, _ = D.get_dataset("fashionmnist", str(tmp_path), train=True, cutout=5)
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names == ["RandomAffine", "RandomVerticalFlip", "ToTensor", "Normalize", "Cutout"]
    assert ds.transform.transforms[3].mean == (0.28604063,)
    mnist = DT.build_transform("mnist", "train")
    assert [type(t).__name__ for t in mnist.transforms] == ["RandomAffine", "ToTensor", "Normalize"]


def test_fashionmnist_found_in_system_dir_and_unzipped_into_data_dir(tmp_path, monkeypatch):
    system = make_idx(tmp_path / "system", gz=True)
    monkeypatch.setattr(DM, "FASHION_MNIST_SYSTEM_DIR", str(system))
    data_dir = tmp_path / "data"
    ds, _ = D.get_dataset("fashionmnist", str(data_dir), train=False, transform="eval")
    assert len(ds) == 4 and [ds[i][1] for i in range(4)] == [9, 8, 7, 6]
    raw = data_dir / "FashionMNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").read_bytes() == gzip.decompress(
        (system / "train-images-idx3-ubyte.gz").read_bytes())
    assert not list(raw.glob("*.tmp"))


def test_fashionmnist_unzips_into_cache_when_data_dir_is_read_only(tmp_path, monkeypatch):
    system = make_idx(tmp_path / "system", gz=True)
    monkeypatch.setattr(DM, "FASHION_MNIST_SYSTEM_DIR", str(system))
    data_dir = tmp_path / "readonly"
    monkeypatch.setattr(DM, "_is_writable", lambda path: not str(path).startswith(str(data_dir)))
    ds, _ = D.get_dataset("fashionmnist", str(data_dir), train=True, transform="eval")
    assert len(ds) == 6
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()
    assert not data_dir.exists()


def test_gzipped_idx_in_data_dir_are_unpacked(tmp_path):
    make_idx(tmp_path / "MNIST" / "raw", gz=True)
    ds, _ = D.get_dataset("mnist", str(tmp_path), train=True, transform="eval")
    assert len(ds) == 6 and (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_missing_fashionmnist_names_paths_and_the_package(tmp_path):
    with pytest.raises(DataError) as err:
        D.get_dataset("fashionmnist", str(tmp_path), train=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and str(tmp_path / "no-system-dir") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


# -------------------------------------------------------------------- image folders

def test_imagefolder_rgb_info_read_from_data(tmp_path):
    make_image_folder(tmp_path, size=(12, 10))
    ds, info = D.get_dataset("imagefolder", str(tmp_path), train=True)
    assert info == DatasetInfo(3, 10, 3)
    assert len(ds) == 6 and sorted(ds[i][1] for i in range(6)) == [0, 0, 1, 1, 2, 2]
    assert ds[0][0].shape == (3, 10, 10) and ds[0][0].min() >= -1 and ds[0][0].max() <= 1
    assert isinstance(ds.transform.transforms[1], T.RandomHorizontalFlip)
    test, _ = D.get_dataset("imagefolder", str(tmp_path), train=False, transform="eval")
    assert len(test) == 6 and not any(isinstance(t, T.RandomHorizontalFlip)
                                      for t in test.transform.transforms)


def test_imagefolder_grayscale_and_val_fallback(tmp_path):
    make_image_folder(tmp_path, mode="L", size=(9, 9), classes=("a", "b"), splits=("train", "val"))
    ds, info = D.get_dataset("imagefolder", str(tmp_path), train=False, transform="eval")
    assert info == DatasetInfo(1, 9, 2) and len(ds) == 4
    assert ds[0][0].shape == (1, 9, 9)


def test_imagenet_classes_counted_from_folders(tmp_path):
    make_image_folder(tmp_path, size=(40, 30), classes=("n01", "n02"), splits=("train", "val"))
    ds, info = D.get_dataset("imagenet", str(tmp_path), train=False, transform="eval")
    assert info == DatasetInfo(3, 224, 2) and ds[0][0].shape == (3, 224, 224)
    train, train_info = D.get_dataset("imagenet", str(tmp_path), train=True)
    assert train_info == DatasetInfo(3, 224, 2)
    assert [type(t).__name__ for t in train.transform.transforms][:3] == \
        ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter"]
    assert train[0][0].shape == (3, 224, 224)


def test_missing_image_folders_are_data_errors(tmp_path):
    for name in ("imagenet", "imagefolder"):
        with pytest.raises(DataError) as err:
            D.get_dataset(name, str(tmp_path), train=True)
        assert str(tmp_path / "train") in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------- names, synthetic

def test_unknown_names_and_transforms():
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        D.get_dataset("svhn", "/nowhere", train=True)
    with pytest.raises(ValueError, match="imagefolder"):
        D.get_dataset("svhn", "/nowhere", train=False)
    with pytest.raises(ValueError, match="train, eval"):
        D.get_dataset("synthetic", "/nowhere", train=True, transform="test")
    assert set(DI.DATASETS) >= set(DI.DATASET_INFO)
    assert DI.dataset_info("cifar100") == DatasetInfo(3, 32, 100)


def test_synthetic_deterministic_and_learnable():
    spec = SyntheticSpec(channels=2, size=8, classes=4, train_size=40, test_size=20)
    a, info = D.get_dataset("synthetic", "", train=True, synthetic=spec)
    b, _ = D.get_dataset("synthetic", "", train=True, synthetic=spec)
    test, _ = D.get_dataset("synthetic", "", train=False, synthetic=spec)
    assert info == DatasetInfo(2, 8, 4)
    assert len(a) == 40 and len(test) == 20 and a[0][0].shape == (2, 8, 8)
    assert torch.equal(a.data, b.data) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.data[:20], test.data)
    assert sorted(set(a.targets.tolist())) == [0, 1, 2, 3]
    # learnable: nearest class mean (estimated on train) classifies the test split
    means = torch.stack([a.data[a.targets == c].mean(0) for c in range(4)])
    dists = torch.cdist(test.data.flatten(1), means.flatten(1))
    assert (dists.argmin(1) == test.targets).float().mean() > 0.9
    assert D.get_dataset("synthetic", "", train=True)[1] == DatasetInfo(3, 32, 10)


# ------------------------------------------------------------------------------ Cutout

def test_cutout_zeroes_one_clipped_square():
    cut = DT.Cutout(6)
    full = 0
    for seed in range(40):
        torch.manual_seed(seed)
        img = torch.ones(3, 20, 20)
        out = cut(img)
        assert torch.equal(img, torch.ones(3, 20, 20))  # input untouched
        zero = out[0] == 0
        assert torch.equal(zero, out[2] == 0)  # same square in every channel
        rows, cols = zero.any(1).nonzero(), zero.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert 3 <= h <= 6 and 3 <= w <= 6 and zero.sum() == h * w  # a (clipped) rectangle
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        full += (h, w) == (6, 6)
    assert full > 10
    torch.manual_seed(3)
    first = cut(torch.ones(1, 20, 20))
    torch.manual_seed(3)
    assert torch.equal(first, cut(torch.ones(1, 20, 20)))


# ------------------------------------------------------------------ splits, loaders

def test_split_indices():
    a, b = DS.split_indices(10, 0.5, seed=1)
    assert len(a) == 5 and len(b) == 5 and sorted(a + b) == list(range(10))
    assert (a, b) == DS.split_indices(10, 0.5, seed=1)
    assert (a, b) != DS.split_indices(10, 0.5, seed=2)
    assert a != sorted(a) or b != sorted(b)
    a, b = DS.split_indices(7, 0.3, seed=0)
    assert len(a) == round(7 * 0.3) and not set(a) & set(b)
    assert DS.split_indices(5, 1.0, seed=3) == ([0, 1, 2, 3, 4], [])
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            DS.split_indices(10, bad, seed=0)


def test_subset_size():
    assert DS.subset_size(10, 3) == 3
    assert DS.subset_size(4, 100) == 4
    assert DS.subset_size(4, None) == 4
    with pytest.raises(ValueError):
        DS.subset_size(4, 0)


def _order(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_make_loader_order_reproducible_per_seed_and_epoch():
    ds = torch.utils.data.TensorDataset(torch.zeros(30, 1), torch.arange(30))
    idx = list(range(5, 25))
    first = _order(LD.make_loader(ds, idx, 4, shuffle=True, seed=7, epoch=2))
    assert sorted(first) == idx
    assert _order(LD.make_loader(ds, idx, 4, shuffle=True, seed=7, epoch=2)) == first
    assert _order(LD.make_loader(ds, idx, 4, shuffle=True, seed=7, epoch=3)) != first
    assert _order(LD.make_loader(ds, idx, 4, shuffle=True, seed=8, epoch=2)) != first
    # resuming mid-epoch: the same epoch's order, from batch 2 on
    assert _order(LD.make_loader(ds, idx, 4, shuffle=True, seed=7, epoch=2,
                                 skip_batches=2)) == first[8:]
    # sharded over 2 ranks: disjoint halves of a (seed, epoch) permutation
    ranks = [_order(LD.make_loader(ds, idx, 4, shuffle=True, seed=7, epoch=2, replicas=(r, 2)))
             for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == idx and len(ranks[0]) == len(ranks[1]) == 10
    assert _order(LD.make_loader(ds, None, 7, shuffle=False)) == list(range(30))
    assert len(LD.make_loader(ds, None, 7, shuffle=False, drop_last=True)) == 4
    with pytest.raises(ValueError):
        LD.make_loader(ds, None, 4, shuffle=True, sampler=torch.utils.data.SequentialSampler(ds))


@pytest.mark.e2e
def test_make_loader_with_workers():
    ds = D.SyntheticDataset(SyntheticSpec(size=4, train_size=12), train=True)
    loader = LD.make_loader(ds, range(12), 4, shuffle=True, num_workers=2, seed=1)
    assert loader.persistent_workers and loader.worker_init_fn is LD.worker_init_fn
    assert sorted(_order(loader)) == sorted(ds.targets.tolist())


def test_infinite_cycles_and_rejects_empty():
    loader = LD.make_loader(torch.utils.data.TensorDataset(torch.arange(3)), None, 2, shuffle=False)
    it = LD.infinite(loader)
    got = [next(it)[0].tolist() for _ in range(5)]
    assert got == [[0, 1], [2], [0, 1], [2], [0, 1]]
    with pytest.raises(ValueError):
        next(LD.infinite([]))


# --------------------------------------------------------------------------------- startup

@pytest.mark.e2e
def test_scripts_start_without_torchvision():
    """torchvision (about 2 s to import) is imported when a dataset or transform is built, not
    when a script starts: importing the scripts and `search.py --help` leave it unloaded."""
    code = """if True:
        import runpy, sys
        import config, run_all, search, augment, test
        assert test.__file__.endswith("test.py"), test.__file__
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torchvision")
        assert not loaded, f"importing the scripts loaded {loaded[:3]}"
        sys.argv = ["search.py", "--help"]
        try:
            runpy.run_path("search.py", run_name="__main__")
        except SystemExit as stop:
            assert stop.code in (0, None), stop.code
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torchvision")
        assert not loaded, f"search.py --help loaded {loaded[:3]}"
    """
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: search.py" in done.stdout
