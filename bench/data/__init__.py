"""The data module: datasets by name, nested stratified subsets, and data kept on the device.

Datasets: `spatial` and `spatial_control` (synthetic, image and patch forms), `cifar10`,
`cifar100`, `svhn` (torchvision's on-disk layout; see `bench.data.roots` for where they
are looked for) and `imagefolder` (users' own train/ and test/ class folders).
"""

# Importing the dataset modules registers them.
from bench.data import cifar, control, imagefolder, spatial, svhn  # noqa: F401
from bench.data.baselines import spatial_baselines
from bench.data.loader import DeviceLoader, Normalizer
from bench.data.registry import (
    Splits,
    check_available,
    dataset_hash_view,
    list_datasets,
    load_splits,
    parse_options,
    register_dataset,
    resolve_dataset,
)
from bench.data.subsets import nested_order, stratified_subset, subset_size
from bench.data.trial import TrialData, build_trial_data

__all__ = [
    "DeviceLoader",
    "Normalizer",
    "Splits",
    "TrialData",
    "build_trial_data",
    "check_available",
    "dataset_hash_view",
    "list_datasets",
    "load_splits",
    "nested_order",
    "parse_options",
    "register_dataset",
    "resolve_dataset",
    "spatial_baselines",
    "stratified_subset",
    "subset_size",
]
