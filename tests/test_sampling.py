"""Sampling modes of genkd.sampling: train mode (batch statistics per batch of a global grid, the reference's
G_eval_mode off) against eval mode (running statistics), state left untouched, seeds, process counts."""
import copy

import pytest
import torch

import genkd  # noqa: F401  (before anything that imports torchvision)
from genkd import evaluation
from genkd.defaults import gan_config
from genkd.models.biggan import Generator
from genkd.sampling import balanced_labels, quantize, sample_images, sampling_mode


class FakeAccelerator:
    """Process ``rank`` of ``world`` (no collective needed: the tests ask for this process's share only)."""

    def __init__(self, rank, world):
        self.process_index, self.num_processes = rank, world
        self.is_local_main_process = self.is_main_process = rank == 0

    def unwrap_model(self, model):
        return model


@pytest.fixture
def generator():
    """A tiny BigGAN whose running statistics and spectral-norm vectors are no longer the initial ones."""
    torch.manual_seed(0)
    model = Generator(num_classes=10, width=2, z_dim=8)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 8) * 2 + 0.5, torch.randint(10, (16,)))
    return model.eval()


def state(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_train_mode_uses_batch_statistics_and_leaves_the_state_unchanged(generator):
    before = state(generator)
    train_images, labels = sample_images(generator, 10, 30, batch_size=10, seed=1, progress=False, mode="train")
    eval_images, eval_labels = sample_images(generator, 10, 30, batch_size=10, seed=1, progress=False, mode="eval")
    assert torch.equal(labels, eval_labels) and torch.equal(labels, balanced_labels(30, 10, seed=1))
    assert (train_images.int() - eval_images.int()).abs().float().mean() > 1.0  # batch vs running statistics
    after = generator.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)
    norms = [module for module in generator.modules() if hasattr(module, "track_running_stats")]
    assert not generator.training and all(norm.track_running_stats for norm in norms)
    # Each batch of 10 is normalised by its own statistics: the same as the model in training mode, batch by batch,
    # with its spectral-norm vectors held (eval-mode parametrizations), and the running statistics unchanged.
    reference = copy.deepcopy(generator).train()
    for module in reference.modules():
        if type(module).__name__ == "_SpectralNorm":
            module.eval()
    latents = torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.cat([quantize(reference(latents[i : i + 10], labels[i : i + 10])) for i in range(0, 30, 10)])
    assert torch.equal(train_images, expected)


def test_train_mode_depends_on_the_batch_and_eval_mode_does_not(generator):
    def sample(batch_size, mode):
        return sample_images(generator, 10, 20, batch_size=batch_size, seed=2, progress=False, mode=mode)[0]

    assert torch.equal(sample(5, "eval"), sample(20, "eval"))
    assert not torch.equal(sample(5, "train"), sample(20, "train"))


def test_train_mode_pads_the_last_batch_and_is_reproducible(generator):
    """23 samples in batches of 10: the third batch is full (3 kept, 7 padding images dropped), as the reference
    samples whole batches; so the first 20 images do not depend on how many samples are asked for."""
    images, _ = sample_images(generator, 10, 23, batch_size=10, seed=3, progress=False, mode="train")
    assert images.shape == (23, 3, 32, 32) and images.dtype == torch.uint8
    again, _ = sample_images(generator, 10, 23, batch_size=10, seed=3, progress=False, mode="train")
    assert torch.equal(images, again)
    other_seed, _ = sample_images(generator, 10, 23, batch_size=10, seed=4, progress=False, mode="train")
    assert not torch.equal(images, other_seed)
    # 20 samples are the first two whole batches (balanced labels differ between 20 and 23, so compare per latent).
    latents = torch.randn(23, 8, generator=torch.Generator().manual_seed(3))
    labels = balanced_labels(23, 10, seed=3)
    reference = copy.deepcopy(generator)
    with torch.no_grad(), sampling_mode(reference, "train"):
        assert torch.equal(images[:10], quantize(reference(latents[:10], labels[:10])))
        assert not torch.equal(images[20:], quantize(reference(latents[20:], labels[20:])))  # not a batch of 3


@pytest.mark.parametrize("world", [2, 3])
def test_train_mode_samples_do_not_depend_on_the_process_count(generator, world):
    single, single_labels = sample_images(generator, 10, 23, batch_size=4, seed=5, progress=False, mode="train")
    shares = [
        sample_images(generator, 10, 23, 4, 5, FakeAccelerator(rank, world), gather=False, progress=False, mode="train")
        for rank in range(world)
    ]
    assert torch.equal(torch.cat([images for images, _ in shares]), single)
    assert torch.equal(torch.cat([labels for _, labels in shares]), single_labels)


def test_sampling_mode_restores_modes_after_an_error(generator):
    generator.train()
    with pytest.raises(RuntimeError, match="half-way"), sampling_mode(generator, "train"):
        assert not generator.training and generator.output[0].training and not generator.output[0].track_running_stats
        raise RuntimeError("half-way")
    assert generator.training and generator.output[0].track_running_stats
    with pytest.raises(ValueError, match=r"unknown sample mode 'standing'; accepted: train, eval"):
        with sampling_mode(generator, "standing"):
            pass


def test_evaluator_samples_in_the_configured_mode(monkeypatch):
    """The Evaluator passes eval.sample_mode and eval.sample_batch_size (defaults: train, 50, the reference's)."""
    calls = []

    class Recorded(Exception):
        pass

    def record(*args, **kwargs):
        calls.append(kwargs)
        raise Recorded

    monkeypatch.setattr(evaluation, "sample_images", record)
    monkeypatch.setattr(evaluation, "resolve_weights", lambda path: path)
    cases = (([], ("train", 50)), (["--eval.sample_mode", "eval", "--eval.sample_batch_size", "7"], ("eval", 7)))
    for argv, expected in cases:
        cfg = gan_config(argv)
        with pytest.raises(Recorded):
            evaluation.Evaluator(cfg)(torch.nn.Linear(1, 1), 10)
        assert (calls[-1]["mode"], calls[-1]["batch_size"]) == expected
