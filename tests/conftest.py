"""Shared fixtures: real CIFAR images from ../shared/data (or $GENKD_SHARED_DATA), never downloads."""
import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(os.environ.get("GENKD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real CIFAR sample {path} not found; put the shared data folder there or set GENKD_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def cifar10_npz() -> Path:
    """Path to the real CIFAR-10 sample (5170 train / 1017 test images, npz layout of genkd's `npz` dataset)."""
    return _shared_file("cifar10.npz")


@pytest.fixture(scope="session")
def cifar100_npz() -> Path:
    return _shared_file("cifar100.npz")


@pytest.fixture(scope="session")
def cifar10_arrays(cifar10_npz):
    """(x_train uint8 NHWC, y_train int64, x_test, y_test) of the real CIFAR-10 sample."""
    with np.load(cifar10_npz) as data:
        return (data["x_train"], data["y_train"].astype(np.int64), data["x_test"], data["y_test"].astype(np.int64))
