"""Datasets: what each one looks like (channels, input size, classes), how its files are read and
checked, how it is downloaded, split and loaded.

CIFAR-10/100, MNIST and Fashion-MNIST are downloaded into ``data_dir`` when they are absent and
``get_dataset(..., download=True)`` (``download``: torchvision's URLs and md5 sums, moved into
place only once verified); Fashion-MNIST falls back to Debian's ``dataset-fashion-mnist`` copy.
ImageNet and image folders are never downloaded. A dataset that is not on disk and could not be
downloaded is a one-line ``DataError`` naming where it was looked for (or the URL that failed) and
how to get it. Transforms follow DARTS's code and pt.darts (the code StacNAS builds on).

Every dataset file is read and checked, so that a damaged one is a one-line DataError naming
it (and what to do), never a traceback: CIFAR batches through a restricted unpickler (``cifar``:
a file carrying code is refused before anything runs), idx files by their header and length
(``mnist``), images item by item (``loaders.read_item``, in DataLoader workers too). A Loader's
workers are shut down when a pass fails, and before the interpreter exits, so a failing worker
never leaves the run hanging.

Modules, from the ground up: ``info`` (shapes, DataError), ``transforms``, ``download``, the
readers ``cifar``, ``mnist`` and ``folders``, ``datasets`` (``get_dataset``), ``splits`` and
``loaders``. Nothing is imported here: each caller imports the module it needs.
"""
