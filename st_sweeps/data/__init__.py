"""Data sets: a registry of configs whose ``load(root, split)`` returns an ``ImageData``.

Entries: ``digits``, ``gmm2d``, ``gmm_image`` (no download), ``cifar10``, ``celeba``,
``celebahq``, ``stl10``, ``imagenet32`` (files under the data root;
``python -m st_sweeps.data.prepare NAME`` checks or fetches them). ``to_model_space`` turns a
stored batch into the model's coordinates.
"""

from st_sweeps.data.base import (DATA_ROOT_ENV, SPLITS, Dataset, ImageData, MissingDataError, Split,
                                 resolve_data_root)
from st_sweeps.data.celeba import CelebA, CelebAHQ
from st_sweeps.data.cifar10 import CIFAR10
from st_sweeps.data.embedded import GMM2D, Digits, GMMImage
from st_sweeps.data.imagenet32 import ImageNet32
from st_sweeps.data.stl10 import STL10
from st_sweeps.data.transforms import resize_images, to_model_space, to_uint8

__all__ = ["Dataset", "ImageData", "MissingDataError", "Split", "SPLITS", "DATA_ROOT_ENV", "resolve_data_root",
           "Digits", "GMM2D", "GMMImage", "CIFAR10", "CelebA", "CelebAHQ", "STL10", "ImageNet32",
           "to_model_space", "to_uint8", "resize_images"]
