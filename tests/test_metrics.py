"""Inception features, FID and IS against torch-fidelity itself, PRDC on Inception features, the weights errors.

The Inception network has torch-fidelity's architecture with random (Kaiming) weights: the pretrained file cannot be
downloaded here, and the comparisons only need both sides to use the same weights file.
"""
import contextlib
import io
import shutil
import urllib.error

import numpy as np
import prdc as reference_prdc
import pytest
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import Dataset

import genkd  # noqa: F401  (before torch_fidelity, which imports torchvision: see genkd/_torchvision_compat.py)
from torch_fidelity import calculate_metrics  # noqa: E402  isort: skip

from genkd.metrics import (
    InceptionWeightsError,
    compute_inception_score,
    compute_prdc,
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    load_inception,
    resolve_weights,
    save_random_inception_weights,
)
from genkd.metrics import inception as inception_module

COUNT = 24  # images per set: Inception at 299x299 on a laptop CPU costs ~0.1 s per image


class UInt8Images(Dataset):
    """uint8 CHW tensors, the input torch-fidelity's calculate_metrics takes."""

    def __init__(self, images_nhwc: np.ndarray):
        self.images = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    return save_random_inception_weights(tmp_path_factory.mktemp("inception") / "random-inception.pth")


@pytest.fixture(scope="session")
def image_sets(cifar10_arrays):
    """Real test images, real train images, and the train images made brighter."""
    x_train, _, x_test, _ = cifar10_arrays
    train = x_train[:COUNT]
    brighter = np.clip(train.astype(np.int16) + 70, 0, 255).astype(np.uint8)
    return {"test": x_test[:COUNT], "train": train, "brighter": brighter}


@pytest.fixture(scope="session")
def features(inception_weights, image_sets):
    model = load_inception(inception_weights)
    return {name: extract_features(model, images, COUNT, progress=False) for name, images in image_sets.items()}


def test_features_have_the_right_shape_and_do_not_depend_on_the_batch(inception_weights, image_sets, features):
    pool, logits = features["test"]
    assert pool.shape == (COUNT, 2048) and logits.shape == (COUNT, 1008)
    assert pool.dtype == logits.dtype == torch.float32
    assert (pool.std(dim=0).mean() > 1e-3 * pool.abs().mean()).item()  # images told apart: features did not collapse
    model = load_inception(inception_weights)
    small_batches = extract_features(model, image_sets["test"][:5], batch_size=2, progress=False)
    torch.testing.assert_close(small_batches.pool, pool[:5], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(small_batches.logits, logits[:5], rtol=1e-4, atol=1e-4)  # logits are ~10


def test_fid_and_is_equal_torch_fidelity_on_the_same_images_and_weights(inception_weights, image_sets, features):
    with threadpool_limits(1):  # 2048 x 2048 eigen-solvers: multi-threaded LAPACK on a busy 2-core box mostly waits
        theirs = calculate_metrics(
            input1=UInt8Images(image_sets["train"]),
            input2=UInt8Images(image_sets["test"]),
            fid=True,
            isc=True,
            cuda=False,
            cache=False,
            verbose=False,
            save_cpu_ram=True,  # no DataLoader worker processes
            batch_size=COUNT,
            feature_extractor_weights_path=str(inception_weights),
        )
        fid = frechet_distance(*feature_statistics(features["train"].pool), *feature_statistics(features["test"].pool))
    is_mean, is_std = compute_inception_score(features["train"].logits)
    assert fid == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)
    from_features = fid_from_features(*feature_statistics(features["train"].pool), features["test"].pool)
    assert from_features == pytest.approx(fid, rel=1e-6)
    assert is_mean == pytest.approx(theirs["inception_score_mean"], rel=1e-3)
    assert is_std == pytest.approx(theirs["inception_score_std"], rel=1e-3, abs=1e-4)
    assert is_mean > 1.05 and is_std > 1e-3  # the logits tell images apart: not a comparison of two constants


def test_inception_score_matches_torch_fidelity_formula_exactly(features):
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.cat([features[name].logits for name in ("test", "train", "brighter")])
    for splits in (10, 7):
        theirs = isc_features_to_metric(logits, splits=splits)
        ours = compute_inception_score(logits, splits=splits)
        assert ours == pytest.approx((theirs["inception_score_mean"], theirs["inception_score_std"]), rel=1e-9)


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift(features):
    test_stats = feature_statistics(features["test"].pool)
    assert abs(fid_from_features(*test_stats, features["test"].pool)) < 1e-9 * test_stats[1].trace().item()
    train_fid = fid_from_features(*test_stats, features["train"].pool)
    brighter_fid = fid_from_features(*test_stats, features["brighter"].pool)
    assert 0 < train_fid < brighter_fid


def test_fid_matches_the_textbook_formula_with_few_and_many_samples():
    """scipy's sqrtm on full-rank statistics (N > D), and the N x N route of fid_from_features when N < D."""
    from scipy import linalg

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((400, 16))
    mean, cov = reference.mean(0), np.cov(reference, rowvar=False)
    for count in (500, 9):
        other = rng.standard_normal((count, 16)) @ rng.standard_normal((16, 16)) * 0.5 + 0.3
        other_mean, other_cov = other.mean(0), np.cov(other, rowvar=False)
        product_root = linalg.sqrtm(cov @ other_cov).real
        textbook = ((mean - other_mean) ** 2).sum() + np.trace(cov + other_cov - 2 * product_root)
        reference_stats = feature_statistics(torch.from_numpy(reference))
        from_stats = frechet_distance(*reference_stats, *feature_statistics(torch.from_numpy(other)))
        from_features = fid_from_features(*reference_stats, torch.from_numpy(other))
        assert from_stats == pytest.approx(textbook, rel=1e-7) and from_features == pytest.approx(textbook, rel=1e-7)


def test_prdc_on_inception_features_equals_the_reference(features):
    real, fake = features["test"].pool, features["train"].pool
    with contextlib.redirect_stdout(io.StringIO()):
        expected = reference_prdc.compute_prdc(real.numpy(), fake.numpy(), 5)
    ours = compute_prdc(real, fake, 5, tile_size=8)
    assert ours == pytest.approx({key: float(value) for key, value in expected.items()}, abs=1e-6)


def test_missing_weights_offline_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = (
        "Inception weights not available offline: pass --eval.inception-weights "
        "/path/to/weights-inception-2015-12-05-6726825d.pth (download it once on a machine with internet from "
        "torch-fidelity's release page"
    )
    with pytest.raises(InceptionWeightsError) as error:
        resolve_weights(None, download=False)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InceptionWeightsError, match="not available offline"):
        resolve_weights(None)
    with pytest.raises(InceptionWeightsError, match="not found: pass --eval.inception-weights"):
        resolve_weights(tmp_path / "missing.pth")


def test_weights_are_found_in_torch_hub_cache_and_bad_files_are_reported(tmp_path, monkeypatch, inception_weights):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = inception_module.default_weights_path()
    cached.parent.mkdir(parents=True)
    shutil.copy(inception_weights, cached)
    assert resolve_weights(None, download=False) == cached
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a state dict")
    with pytest.raises(InceptionWeightsError, match="cannot load Inception weights"):
        load_inception(corrupt)
