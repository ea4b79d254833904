"""Datasets (MNIST, Fashion-MNIST, CIFAR-10): validating readers, lookup, verified download, and the loader.

Images come back as uint8 ``(N, C, H, W)`` and labels as int64 ``(N,)`` (int64 to match PyTorch's targets).
:mod:`.datasets` (the registry and the Dataset type), :mod:`.readers` (idx, CIFAR), :mod:`.sources`
(``load_dataset``: lookup in ``data_dir``, ``$GPUCNN_DATA``, ``~/.cache/gpucnn/<name>`` and the Debian package's
folder, then a download checked against the published SHA-256) and :mod:`.loader` (``DataLoader``: batches,
per-epoch shuffling from ``(seed, epoch)``, augmentation, normalisation, transfer to the device), and
:mod:`.files` (your own data: an ``.npz`` of arrays or a folder of PNG/JPEG images in class subfolders).
"""
from .datasets import DATASETS, Dataset, DatasetError, channel_stats, dataset_spec
from .files import class_indices, has_split, images_nchw, load_path, read_image, read_image_folder, read_npz
from .loader import AUGMENTATIONS, DataLoader, Loader
from .readers import read_cifar10, read_cifar_batch, read_idx, read_idx_images, read_idx_labels, read_mnist
from .sources import DownloadError, cache_dir, download_file, fetch, is_own_data, load_dataset, search_places

__all__ = ["DATASETS", "Dataset", "DatasetError", "channel_stats", "dataset_spec", "AUGMENTATIONS", "DataLoader",
           "Loader", "read_cifar10", "read_cifar_batch", "read_idx", "read_idx_images", "read_idx_labels",
           "read_mnist", "DownloadError", "cache_dir", "download_file", "fetch", "is_own_data", "load_dataset",
           "search_places", "class_indices", "has_split", "images_nchw", "load_path", "read_image",
           "read_image_folder", "read_npz"]
