"""genkd.data on the real CIFAR sample: sources, subset draws, the saved subset file, the GAN training items."""
import json
import pickle
import shutil
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from genkd.config import as_config
from genkd.data import DataError, load_arrays, official_order, select_subset, subset_indices


def data_cfg(**overrides):
    cfg = {"dataset": "npz", "root": "", "download": False, "frac": 1.0, "balanced": False, "subset_seed": 0}
    cfg["subset"] = "reference"
    cfg["num_workers"] = 0
    return as_config({**cfg, **overrides})


def test_npz_loads_the_shared_file(cifar10_npz, cifar10_arrays, cifar100_npz):
    x_train, y_train, x_test, y_test = cifar10_arrays
    images, labels, num_classes = load_arrays(data_cfg(root=str(cifar10_npz)), "train")
    assert images.dtype == np.uint8 and images.shape == (5170, 32, 32, 3) and labels.dtype == np.int64
    assert np.array_equal(images, x_train) and np.array_equal(labels, y_train) and num_classes == 10
    images, labels, _ = load_arrays(data_cfg(root=str(cifar10_npz)), "test")
    assert np.array_equal(images, x_test) and np.array_equal(labels, y_test)
    # 486 CIFAR-100 training images do not hold every label: the class names give the count.
    assert load_arrays(data_cfg(root=str(cifar100_npz)), "train")[2] == 100


def test_npz_without_class_names_counts_train_labels(cifar10_arrays, tmp_path):
    x_train, y_train, x_test, y_test = cifar10_arrays
    keep = y_train < 7
    np.savez(
        tmp_path / "seven.npz", x_train=x_train[keep], y_train=y_train[keep], x_test=x_test[:5], y_test=y_test[:5] % 7
    )
    assert load_arrays(data_cfg(root=str(tmp_path / "seven.npz")), "test")[2] == 7


def test_npz_errors(cifar10_arrays, tmp_path):
    x_train, y_train, _, _ = cifar10_arrays
    with pytest.raises(DataError, match=r"npz file .*missing.npz not found: pass --data-root"):
        load_arrays(data_cfg(root=str(tmp_path / "missing.npz")), "train")
    np.savez(tmp_path / "no_test.npz", x_train=x_train[:4], y_train=y_train[:4])
    with pytest.raises(DataError, match=r"lacks x_test, y_test"):
        load_arrays(data_cfg(root=str(tmp_path / "no_test.npz")), "test")
    np.savez(tmp_path / "chw.npz", x_train=x_train[:4].transpose(0, 3, 1, 2), y_train=y_train[:4])
    with pytest.raises(DataError, match=r"must be uint8 \(N, 32, 32, 3\).*got uint8 \(4, 3, 32, 32\)"):
        load_arrays(data_cfg(root=str(tmp_path / "chw.npz")), "train")


def test_image_folder_round_trip(cifar10_arrays, tmp_path):
    x_train, y_train, x_test, y_test = cifar10_arrays
    names = ["airplane", "automobile", "bird"]  # sorted, so label ids 0, 1, 2
    for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        for label, name in enumerate(names):
            (tmp_path / split / name).mkdir(parents=True)
            for k, index in enumerate(np.flatnonzero(labels == label)[:3]):
                Image.fromarray(images[index]).save(tmp_path / split / name / f"{k}.png")
    images, labels, num_classes = load_arrays(data_cfg(dataset="folder", root=str(tmp_path)), "train")
    expected = np.concatenate([x_train[np.flatnonzero(y_train == label)[:3]] for label in range(3)])
    assert num_classes == 3 and np.array_equal(labels, np.repeat([0, 1, 2], 3)) and np.array_equal(images, expected)
    assert load_arrays(data_cfg(dataset="folder", root=str(tmp_path)), "test")[0].shape == (9, 32, 32, 3)
    # A folder without train/ is the training split itself; larger images are resized to 32x32.
    Image.fromarray(x_train[0]).resize((64, 64)).save(tmp_path / "train" / "bird" / "big.png")
    images, labels, _ = load_arrays(data_cfg(dataset="folder", root=str(tmp_path / "train")), "train")
    assert images.shape == (10, 32, 32, 3) and labels.tolist().count(2) == 4
    with pytest.raises(DataError, match=r"image folder .*test not found"):
        load_arrays(data_cfg(dataset="folder", root=str(tmp_path / "train")), "test")


@pytest.mark.parametrize(("dataset", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_torchvision_dataset_fails_fast_without_network(dataset, folder, tmp_path):
    start = time.perf_counter()
    message = rf"not found under .* pass --data-root DIR holding {folder}, or use --data.dataset npz"
    with pytest.raises(DataError, match=message):
        load_arrays(data_cfg(dataset=dataset, root=str(tmp_path), download=False), "train")
    assert time.perf_counter() - start < 5.0


def test_failed_download_says_offline(monkeypatch, tmp_path):
    def offline(self):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr("torchvision.datasets.CIFAR10.download", offline)
    with pytest.raises(DataError, match=r"CIFAR-10 not found under .* could not be downloaded \(offline\?\)"):
        load_arrays(data_cfg(dataset="cifar10", root=str(tmp_path), download=True), "train")


def test_torchvision_cifar10_arrays_from_official_layout(cifar10_npz, cifar10_arrays, monkeypatch, tmp_path):
    """Real images written as the official batch pickles (their checksums bypassed: the full files are unobtainable
    here) next to the official, checksum-verified batches.meta."""
    x_train, y_train, x_test, y_test = cifar10_arrays
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = np.array_split(np.arange(60), 5)
    batches = [(f"data_batch_{i + 1}", x_train[part], y_train[part]) for i, part in enumerate(parts)]
    for name, images, labels in [*batches, ("test_batch", x_test[:7], y_test[:7])]:
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # the pickles hold CHW rows
        (folder / name).write_bytes(pickle.dumps({"data": rows, "labels": labels.tolist()}))
    shutil.copy(cifar10_npz.parent / "cifar-10-batches-py" / "batches.meta", folder)
    monkeypatch.setattr("torchvision.datasets.CIFAR10._check_integrity", lambda self: True)
    images, labels, num_classes = load_arrays(data_cfg(dataset="cifar10", root=str(tmp_path)), "train")
    assert np.array_equal(images, x_train[:60]) and np.array_equal(labels, y_train[:60]) and num_classes == 10
    assert images.flags.c_contiguous and labels.dtype == np.int64
    assert np.array_equal(load_arrays(data_cfg(dataset="cifar10", root=str(tmp_path)), "test")[0], x_test[:7])


@pytest.mark.parametrize("frac", [0.02, 0.1, 0.5])
def test_subset_size_determinism_and_seed(cifar10_arrays, frac):
    labels = cifar10_arrays[1]
    chosen = select_subset(labels, frac, seed=0)
    assert len(chosen) == round(frac * len(labels)) and chosen.dtype == np.int64
    assert np.array_equal(chosen, np.unique(chosen)) and chosen.min() >= 0 and chosen.max() < len(labels)
    assert np.array_equal(chosen, select_subset(labels, frac, seed=0))
    assert not np.array_equal(chosen, select_subset(labels, frac, seed=1))


def test_subset_edges(cifar10_arrays):
    labels = cifar10_arrays[1]
    assert np.array_equal(select_subset(labels, 1.0, seed=3), np.arange(len(labels)))
    assert len(select_subset(labels, 1e-6, seed=0)) == 1


def test_balanced_subset_takes_the_same_count_per_class(cifar10_arrays):
    labels = cifar10_arrays[1]
    chosen = select_subset(labels, 0.1, seed=0, balanced=True)
    assert np.bincount(labels[chosen], minlength=10).tolist() == [52] * 10  # round(0.1 * 5170 / 10)
    assert not np.array_equal(chosen, select_subset(labels, 0.1, seed=1, balanced=True))
    with pytest.raises(DataError, match=r"needs 507 images of every class but class \d has \d+: lower data.frac"):
        select_subset(labels, 0.98, seed=0, balanced=True)


@pytest.mark.parametrize("frac", [0, -0.1, 1.5, float("nan")])
def test_bad_fractions_are_rejected(cifar10_arrays, frac):
    with pytest.raises(DataError, match=rf"data.frac must be in \(0, 1\], got {frac}"):
        select_subset(cifar10_arrays[1], frac, seed=0)


def test_subset_file_is_saved_reused_and_checked(cifar10_arrays, tmp_path):
    labels = cifar10_arrays[1]
    run_dir = tmp_path / "runs" / "new"  # created on first use
    cfg = data_cfg(frac=0.1, subset_seed=5, subset="permutation")
    chosen = subset_indices(cfg, labels, run_dir)
    saved = json.loads((run_dir / "subset_indices.json").read_text())
    assert saved["indices"] == chosen.tolist() and (saved["frac"], saved["seed"], saved["N"]) == (0.1, 5, 5170)
    assert saved["subset"] == "permutation" and "official_indices" not in saved
    assert [p.name for p in run_dir.iterdir()] == ["subset_indices.json"]  # no temporary file left
    # The saved choice wins over a fresh draw (here: a file edited by hand to hold other indices).
    saved["indices"] = saved["indices"][::-1][:10]
    (run_dir / "subset_indices.json").write_text(json.dumps(saved))
    assert subset_indices(cfg, labels, run_dir).tolist() == saved["indices"]
    message = r"was drawn with .*frac=0.1.* but this run asks for .*frac=0.2.*choose another --run-dir"
    with pytest.raises(DataError, match=message):
        subset_indices({**cfg, "frac": 0.2}, labels, run_dir)
    with pytest.raises(DataError, match=r"seed=5.*seed=6"):
        subset_indices({**cfg, "subset_seed": 6}, labels, run_dir)
    with pytest.raises(DataError, match=r"subset=permutation.*subset=reference"):
        subset_indices({**cfg, "subset": "reference"}, labels, run_dir)
    assert json.loads((run_dir / "subset_indices.json").read_text()) == saved  # not overwritten
    assert np.array_equal(subset_indices(cfg, labels, None), chosen)
    # A file written before data.subset existed was drawn by permutation.
    del saved["subset"]
    (run_dir / "subset_indices.json").write_text(json.dumps(saved))
    assert subset_indices(cfg, labels, run_dir).tolist() == saved["indices"]
    with pytest.raises(DataError, match=r"subset=permutation.*subset=reference"):
        subset_indices({**cfg, "subset": "reference"}, labels, run_dir)


# ---- the reference subset: data-efficient-gans DiffAugment-biggan-cifar/datasets.py, CIFAR10.__init__ with the
# ---- scripts' --num_samples 5000 (10 %) / 10000 (20 %) and --seed 0


def reference_call(num_samples: int, seed: int = 0) -> np.ndarray:
    """The reference's draw, written as it is called there (global NumPy generator), then the state put back."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.choice(50000, num_samples, replace=False)
    finally:
        np.random.set_state(state)


def official_labels(npz_path):
    with np.load(npz_path) as data:
        return data["y_train_full"].astype(np.int64), data["train_index"], data["y_train"].astype(np.int64)


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
@pytest.mark.parametrize(("frac", "num_samples"), [(0.1, 5000), (0.2, 10000)])
def test_reference_subset_is_the_reference_call_for_torchvision_order(which, frac, num_samples, request):
    full, _, _ = official_labels(request.getfixturevalue(f"{which}_npz"))
    expected = np.sort(reference_call(num_samples))
    assert np.array_equal(select_subset(full, frac, seed=0), expected)
    # torchvision CIFAR is loaded in the official order: the loaded indices are the official ones.
    chosen = subset_indices(data_cfg(dataset=which, frac=frac), full, None)
    assert np.array_equal(chosen, expected)
    # genkd's earlier draw shares only about frac of these images (494 of 5000 for CIFAR-10 at 10 %)
    old = select_subset(full, frac, seed=0, method="permutation")
    assert len(np.intersect1d(old, expected)) < 1.2 * frac * num_samples


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_reference_subset_of_a_partial_npz_keeps_the_chosen_images_it_holds(which, request, tmp_path):
    path = request.getfixturevalue(f"{which}_npz")
    full, train_index, y_train = official_labels(path)
    images, labels, _ = load_arrays(data_cfg(root=str(path)), "train")
    reference = reference_call(5000)
    held_official = np.intersect1d(reference, train_index)
    with pytest.warns(UserWarning, match=rf"holds {len(held_official)} of the 5000 images of the reference subset"):
        chosen = subset_indices(data_cfg(root=str(path), frac=0.1), labels, tmp_path)
    assert np.array_equal(train_index[chosen], held_official)  # the same images as the reference, where held
    assert np.array_equal(labels[chosen], full[held_official])  # and the labels genkd assigns are the official ones
    assert np.array_equal(images[chosen], images[np.isin(train_index, reference)])
    saved = json.loads((tmp_path / "subset_indices.json").read_text())
    assert saved["subset"] == "reference" and saved["official_indices"] == held_official.tolist()
    assert saved["indices"] == chosen.tolist()
    # The saved file is reused without a new draw (and without the warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(subset_indices(data_cfg(root=str(path), frac=0.1), labels, tmp_path), chosen)


def test_balanced_reference_subset_draws_per_class_in_official_space(cifar10_npz):
    full, train_index, y_train = official_labels(cifar10_npz)
    rng = np.random.RandomState(0)  # the reference's per-class draw (its val_split code): one seed, classes in order
    per_class = [np.flatnonzero(full == label)[rng.choice(5000, 500, replace=False)] for label in range(10)]
    expected = np.sort(np.concatenate(per_class))
    assert np.array_equal(select_subset(full, 0.1, seed=0, balanced=True), expected)
    with pytest.warns(UserWarning, match=r"holds \d+ of the 5000 images"):
        chosen = subset_indices(data_cfg(root=str(cifar10_npz), frac=0.1, balanced=True), y_train, None)
    assert np.array_equal(train_index[chosen], np.intersect1d(expected, train_index))


def test_permutation_subset_is_the_earlier_draw(cifar10_arrays):
    labels = cifar10_arrays[1]
    for seed in (0, 7):
        rng = np.random.default_rng(seed)
        expected = np.sort(rng.permutation(len(labels))[:517])
        assert np.array_equal(select_subset(labels, 0.1, seed, method="permutation"), expected)
        cfg = data_cfg(frac=0.1, subset_seed=seed, subset="permutation")
        assert np.array_equal(subset_indices(cfg, labels, None), expected)
        rng = np.random.default_rng(seed)
        balanced = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:52] for c in range(10)]))
        assert np.array_equal(select_subset(labels, 0.1, seed, balanced=True, method="permutation"), balanced)
    with pytest.raises(DataError, match=r"unknown data.subset 'sorted'; accepted: reference, permutation"):
        select_subset(labels, 0.1, 0, method="sorted")


def _write_folder(root, images, labels, names, class_names):
    for image, label, name in zip(images, labels, names):
        (root / "train" / class_names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "train" / class_names[label] / f"{name}.png")


def test_numbered_image_folder_gives_the_reference_images(cifar10_npz, tmp_path):
    """A folder named by official index (here data_batch_1's first 1102 images and, to state the official size,
    the last training image, a stand-in picture of its official class) selects the reference's images."""
    full, train_index, _ = official_labels(cifar10_npz)
    with np.load(cifar10_npz) as data:
        x_train, class_names = data["x_train"], [str(name) for name in data["class_names"]]
    keep = train_index < 1102
    positions = np.append(train_index[keep], 49999)
    images = np.concatenate([x_train[keep], x_train[:1]])
    _write_folder(tmp_path, images, full[positions], [f"{p:05d}" for p in positions], class_names)
    cfg = data_cfg(dataset="folder", root=str(tmp_path), frac=0.1)
    folder_images, folder_labels, _ = load_arrays(cfg, "train")
    order = official_order(cfg, folder_labels)
    assert np.array_equal(np.sort(order.positions), np.sort(positions)) and len(order.labels) == 50000
    reference = reference_call(5000)
    with pytest.warns(UserWarning, match=r"image folder .* holds \d+ of the 5000 images of the reference subset"):
        chosen = subset_indices(cfg, folder_labels, None)
    assert np.array_equal(np.sort(order.positions[chosen]), np.intersect1d(reference, positions))
    assert np.array_equal(folder_labels[chosen], full[order.positions[chosen]])
    by_position = dict(zip(train_index.tolist(), x_train))
    assert all(np.array_equal(folder_images[i], by_position[p]) for i, p in zip(chosen, order.positions[chosen]))


def test_image_folder_without_official_names(cifar10_arrays, tmp_path):
    x_train, y_train, _, _ = cifar10_arrays
    names = [str(label) for label in range(10)]
    _write_folder(tmp_path, x_train[:40], y_train[:40], [f"img_{i}" for i in range(40)], names)
    cfg = data_cfg(dataset="folder", root=str(tmp_path), frac=0.5)
    labels = load_arrays(cfg, "train")[1]
    with pytest.warns(UserWarning, match=r"does not state the official order .*differs from the reference's images"):
        assert np.array_equal(subset_indices(cfg, labels, None), select_subset(labels, 0.5, 0))
    (tmp_path / "train" / names[y_train[0]] / "img_0.png").rename(tmp_path / "train" / names[y_train[0]] / "0.png")
    with pytest.raises(DataError, match=r"some file names are official indices and some are not"):
        subset_indices(cfg, labels, None)
    for index, path in enumerate(sorted((tmp_path / "train").rglob("*.png"))):
        path.rename(path.with_name(f"{index % 4}.png"))  # numbered per class, not by official index
    with pytest.raises(DataError, match=r"numbered per class\?\); name each file by its official index"):
        subset_indices(cfg, labels, None)


def test_npz_with_inconsistent_official_order(cifar10_arrays, tmp_path):
    x_train, y_train, x_test, y_test = cifar10_arrays
    np.savez(tmp_path / "half.npz", x_train=x_train[:8], y_train=y_train[:8], x_test=x_test[:2], y_test=y_test[:2],
             train_index=np.arange(8))  # fmt: skip
    with pytest.raises(DataError, match=r"has train_index but not y_train_full: an npz states the official order"):
        subset_indices(data_cfg(root=str(tmp_path / "half.npz"), frac=0.5), y_train[:8], None)
    np.savez(tmp_path / "bad.npz", x_train=x_train[:8], y_train=y_train[:8], x_test=x_test[:2], y_test=y_test[:2],
             train_index=np.arange(8), y_train_full=(y_train[:8] + 1) % 10)  # fmt: skip
    with pytest.raises(DataError, match=r"y_train_full\[train_index\] differs from y_train"):
        subset_indices(data_cfg(root=str(tmp_path / "bad.npz"), frac=0.5), y_train[:8], None)
    # An npz without them is in its own order, taken as the official one.
    np.savez(tmp_path / "plain.npz", x_train=x_train[:8], y_train=y_train[:8], x_test=x_test[:2], y_test=y_test[:2])
    expected = np.sort(np.random.RandomState(0).choice(8, 4, replace=False))
    chosen = subset_indices(data_cfg(root=str(tmp_path / "plain.npz"), frac=0.5), y_train[:8], None)
    assert np.array_equal(chosen, expected)
