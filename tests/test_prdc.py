"""genkd.metrics.prdc against the reference ``prdc`` package (Naeem et al. 2020), decision for decision."""
import contextlib
import io

import numpy as np
import prdc as reference
import pytest
import torch

from genkd.metrics import compute_prdc, full_float32_precision
from genkd.metrics import prdc as ours

KEYS = ("precision", "recall", "density", "coverage")


def reference_prdc(real, fake, k):
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the set sizes
        return {key: float(value) for key, value in reference.compute_prdc(real, fake, k).items()}


def assert_same(real, fake, k, tile_size):
    expected = reference_prdc(real, fake, k)
    ours = compute_prdc(real, fake, k, tile_size=tile_size)
    assert set(ours) == set(KEYS)
    for key in KEYS:
        assert ours[key] == pytest.approx(expected[key], abs=1e-6), (key, ours, expected)
    return ours


@pytest.fixture(scope="module")
def pixel_features(cifar10_arrays):
    """Real CIFAR-10 images as 3072-d pixel vectors: train images vs test images."""
    x_train, _, x_test, _ = cifar10_arrays
    return x_train[:700].reshape(700, -1).astype(np.float32), x_test[:600].reshape(600, -1).astype(np.float32)


def test_the_sweep_error_bound_holds_for_every_pair_and_is_tight_enough_to_be_useful(pixel_features):
    """The int8 + float32 sweep is within margin_i + margin_j of the float64 squared distance, for all pairs: here on real
    image pixels (a natural spectrum, a 9 % tail beyond the head) with some fake tails clamped to the int8 range."""
    real, fake = (torch.from_numpy(features) for features in pixel_features)
    fake[:3] *= 3  # beyond the real sample's tails: their quantisation error is larger, and must still be counted
    centre = real.mean(dim=0).double()
    basis, scale = ours._split(real, centre, ours.HEAD_RANK)
    real_set, fake_set = ours._feature_set(real, centre, basis, scale), ours._feature_set(fake, centre, basis, scale)
    ratio = ours._quantisation_ratio(real_set, fake_set)
    real_set.bound_with(ratio)
    fake_set.bound_with(ratio)
    assert fake_set.rounding_norms[:3].max() > 10 * fake_set.rounding_norms[3:].max()  # clamped
    with full_float32_precision():
        sweep = ours._squared_distances(real_set, slice(0, len(real)), fake_set, slice(0, len(fake))).double()
    exact = torch.cdist(real.double(), fake.double()).square()
    bound = real_set.margin[:, None] + fake_set.margin[None, :]
    assert ((sweep - exact).abs() <= bound).all()
    assert (bound / exact).median() < 0.01  # so only pairs within ~1 % of a radius need the exact path


@pytest.mark.parametrize("k", [1, 3, 5])
def test_equals_reference_on_real_image_pixels(pixel_features, k):
    """Tiles much smaller than the sets: the running top-k and the per-tile counts cross tile borders everywhere."""
    real, fake = pixel_features
    ours = assert_same(real, fake, k, tile_size=128)
    assert 0 < ours["precision"] < 1 and 0 < ours["coverage"] < 1  # a non-trivial case


def test_equals_reference_on_brightened_images(pixel_features):
    """A shifted fake set, so the counts differ from the unshifted case."""
    real, fake = pixel_features
    brighter = assert_same(real, np.clip(fake + 60, 0, 255), 5, tile_size=256)
    assert brighter != compute_prdc(real, fake, 5)


def test_equals_reference_when_fake_tails_are_clamped_to_the_int8_range(pixel_features):
    """The int8 step comes from a sample of the real set: far-out fake points are clamped, with larger margins."""
    real, fake = pixel_features
    assert_same(real, np.concatenate([fake[:40] * 4, fake[40:]]), 5, tile_size=128)


def test_devices_without_int8_matmul_get_the_same_result(pixel_features, monkeypatch):
    real, fake = pixel_features
    expected = compute_prdc(real, fake, 5, tile_size=256)
    monkeypatch.setattr(ours, "_int8_matmul_available", lambda device: False)
    assert compute_prdc(real, fake, 5, tile_size=256) == expected


def test_equals_reference_with_ties_and_duplicates():
    """Integer features: many equal distances and duplicate points, where strict '<' and float rounding decide."""
    rng = np.random.default_rng(0)
    for dim, values in ((3, 4), (6, 3)):
        real = rng.integers(0, values, (500, dim)).astype(np.float32)
        fake = rng.integers(0, values, (450, dim)).astype(np.float32)
        for k in (1, 3, 5):
            assert_same(real, fake, k, tile_size=100)


def test_equals_reference_on_hard_float_cases():
    """A large common offset (float32 cancellation), float64 and mixed inputs, unequal set sizes, odd tiles."""
    rng = np.random.default_rng(1)
    offset = rng.standard_normal((400, 64)).astype(np.float32) + 1000
    assert_same(offset, rng.standard_normal((300, 64)).astype(np.float32) + 1000.05, 5, tile_size=97)
    assert_same(rng.standard_normal((350, 32)), rng.standard_normal((420, 32)) + 0.2, 5, tile_size=64)
    assert_same(rng.standard_normal((350, 32)).astype(np.float32), rng.standard_normal((300, 32)), 3, tile_size=1000)


def test_equals_reference_on_random_high_dimensional_features():
    rng = np.random.default_rng(2)
    real = np.maximum(rng.standard_normal((600, 2048)), 0).astype(np.float32)
    fake = np.maximum(rng.standard_normal((500, 2048)) + 0.05, 0).astype(np.float32)
    assert_same(real, fake, 5, tile_size=200)


def test_identical_sets_are_covered_exactly():
    """Every point is its own fake twin: inside its ball (distance 0), and each ball holds exactly itself and its
    k-1 nearest neighbours (the k-th sits on the border, excluded by '<'), so density is exactly 1 too."""
    features = np.random.default_rng(3).standard_normal((400, 50)).astype(np.float32)
    ours = compute_prdc(features, features.copy(), 5, tile_size=128)
    assert ours == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_independent_samples_of_one_distribution_match_the_expected_coverage():
    """For N = M i.i.d. points, E[coverage] = 1 - prod_{i<k} (N-1-i) / (2N-1-i) ~ 1 - 2^-k (Naeem et al., eq. 7)."""
    rng = np.random.default_rng(4)
    count, k = 3000, 5
    real = rng.standard_normal((count, 16)).astype(np.float32)
    fake = rng.standard_normal((count, 16)).astype(np.float32)
    ours = compute_prdc(real, fake, k, tile_size=1024)
    expected = 1 - np.prod([(count - 1 - i) / (2 * count - 1 - i) for i in range(k)])
    assert expected == pytest.approx(1 - 2**-k, abs=1e-3)
    assert ours["coverage"] == pytest.approx(expected, abs=0.015)
    assert ours["density"] == pytest.approx(1.0, abs=0.1)


def test_torch_inputs_and_tile_size_do_not_change_the_result(pixel_features):
    real, fake = pixel_features
    from_numpy = compute_prdc(real, fake, 5, tile_size=4096)
    assert compute_prdc(torch.from_numpy(real), torch.from_numpy(fake), 5, tile_size=77) == from_numpy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu(pixel_features):
    real, fake = pixel_features
    on_gpu = compute_prdc(torch.from_numpy(real).cuda(), torch.from_numpy(fake).cuda(), 5, tile_size=256)
    assert on_gpu == compute_prdc(real, fake, 5, tile_size=256)


def test_bad_input_gets_a_clear_error():
    features = np.zeros((10, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="needs more than 5"):
        compute_prdc(features[:5], features, 5)
    with pytest.raises(ValueError, match="differ in dimension"):
        compute_prdc(features, np.zeros((10, 3), dtype=np.float32), 2)
    with pytest.raises(ValueError, match="finite"):
        compute_prdc(np.full((10, 4), np.nan, dtype=np.float32), features, 2)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        compute_prdc(np.zeros(10, dtype=np.float32), features, 2)


def test_distances_are_rounded_to_float32_like_the_reference():
    """sklearn returns float32 distances for float32 features. This fake point is 5 - 5e-8 from the origin in exact
    arithmetic, but its float32 distance ties with the origin's radius of 5, so it is not inside that ball
    (strict '<'); with float64 features it is. An implementation in exact or float64 arithmetic gets this wrong."""
    real = np.array([[0, 0], [3, 4], [-50, 60]], dtype=np.float32)
    fake = np.array([[-2.9999992847442627, 4.000000476837158], [100, 100], [100, -100]], dtype=np.float32)
    assert float(fake[0, 0]) ** 2 + float(fake[0, 1]) ** 2 < 25
    in_float32 = assert_same(real, fake, 1, tile_size=2)
    in_float64 = assert_same(real.astype(np.float64), fake.astype(np.float64), 1, tile_size=2)
    assert (in_float32["coverage"], in_float64["coverage"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))


@pytest.mark.parametrize("path", ["sweep", "exact"])
def test_both_paths_equal_the_reference_on_hard_cases(pixel_features, path, monkeypatch):
    """The worst-case fallback (plain exact path) and the sweep, each forced, on the cases where decisions are close:
    real pixels, duplicates and ties, float64 and mixed inputs, the float32 rounding of a distance."""
    monkeypatch.setattr(ours, "UNDECIDED_SHARE", {"sweep": float("inf"), "exact": -1.0}[path])
    real, fake = pixel_features
    forced = assert_same(real, fake, 5, tile_size=256)
    monkeypatch.undo()
    assert forced == compute_prdc(real, fake, 5, tile_size=256)  # identical, not only close
    monkeypatch.setattr(ours, "UNDECIDED_SHARE", {"sweep": float("inf"), "exact": -1.0}[path])
    rng = np.random.default_rng(5)
    grid = rng.integers(0, 3, (300, 6)).astype(np.float32)
    for k in (1, 3):
        assert_same(grid, rng.integers(0, 3, (280, 6)).astype(np.float32), k, tile_size=64)
    assert_same(rng.standard_normal((250, 32)), rng.standard_normal((270, 32)).astype(np.float32) + 0.2, 5, 97)
    test_distances_are_rounded_to_float32_like_the_reference()


def test_the_sample_sends_loose_bounds_to_the_exact_path(pixel_features, monkeypatch):
    """Heavy-tailed features (a few huge values set the int8 step) leave most sampled pairs undecided and take the
    exact path; low-rank features take the sweep. Either way the result is the reference's."""
    chosen = []
    exact_counts = ours._exact_counts
    monkeypatch.setattr(ours, "_exact_counts", lambda *args: chosen.append("exact") or exact_counts(*args))
    rng = np.random.default_rng(6)
    heavy = rng.standard_t(1.5, (400, 512)).astype(np.float32)
    assert_same(heavy, rng.standard_t(1.5, (350, 512)).astype(np.float32) + 0.1, 5, tile_size=128)
    assert chosen == ["exact"]
    latent = rng.standard_normal((750, 8)).astype(np.float32)
    low_rank = np.maximum(latent @ rng.standard_normal((8, 512)).astype(np.float32), 0)
    assert_same(low_rank[:400], low_rank[400:], 5, tile_size=128)
    assert chosen == ["exact"]
