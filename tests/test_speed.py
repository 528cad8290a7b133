"""The fast training step (genkd/speed.py and its pieces in genkd/train.py) against the plain definitions."""
import copy
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genkd.config import as_config
from genkd.defaults import DEFAULTS
from genkd.diffaug import diff_augment
from genkd.models.biggan import Discriminator, Generator
from genkd.speed import SpeedError, adam, c_compiler, compile_in_place, prepare_module, resolve
from genkd.train import RealBatches, update_ema

NUM_CLASSES = 10


def loop_update_ema(ema, model, decay):
    """The previous definition (a Python loop over the state dict), kept as the reference."""
    with torch.no_grad():
        for (name, ema_value), value in zip(ema.state_dict().items(), model.state_dict().values()):
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value, 1.0 - decay)
                if name.endswith(("._u", "._v")):
                    ema_value.copy_(F.normalize(ema_value, dim=0))
            else:
                ema_value.copy_(value)


def loop_real_index(batches: RealBatches, k: int) -> torch.Tensor:
    """The previous definition of batch k's indices: one permutation look-up per image."""
    first = (k * batches.world_size + batches.rank) * batches.batch_size
    n = len(batches.labels)
    return torch.stack([batches._permutation(p // n)[p % n] for p in range(first, first + batches.batch_size)])


def trained_generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    generator = Generator(NUM_CLASSES, width=4, shared_dim=0)
    for _ in range(2):  # moves weights, batch-norm statistics and power-iteration vectors away from their init
        generator(torch.randn(6, 128), torch.randint(NUM_CLASSES, (6,)))
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return generator


@pytest.mark.parametrize("decay", [0.0, 0.9, 0.9999])
def test_foreach_ema_equals_the_loop_exactly(decay):
    model = trained_generator(1)
    ema_loop, ema_foreach = trained_generator(2), trained_generator(2)
    for _ in range(3):
        loop_update_ema(ema_loop, model, decay)
        update_ema(ema_foreach, model, decay)
    for (name, expected), actual in zip(ema_loop.state_dict().items(), ema_foreach.state_dict().values()):
        assert torch.equal(expected, actual), name
    vectors = [value for name, value in ema_foreach.state_dict().items() if name.endswith(("._u", "._v"))]
    assert vectors and all(torch.allclose(v.norm(), torch.tensor(1.0)) for v in vectors)  # renormalised


@pytest.mark.parametrize("batch_size, world_size", [(7, 1), (50, 1), (8, 3), (45, 2)])
def test_vectorised_real_batches_equal_the_per_image_definition(batch_size, world_size):
    """Batches crossing epoch borders (and longer than an epoch: 45 x 2 > 40 images) pick the same images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, 40)
    for rank in range(world_size):
        batches = RealBatches(images, labels, batch_size, 3, rank, world_size, "cpu")
        reference = RealBatches(images, labels, batch_size, 3, rank, world_size, "cpu")
        for k in [0, 1, 5, 6, 17, 1000, 3]:  # out of order too: batch k is a pure function of k
            index = loop_real_index(reference, k)
            torch.manual_seed(k)
            real, real_labels = batches(k)
            torch.manual_seed(k)
            flip = torch.rand(batch_size, 1, 1, 1) < 0.5
            expected = reference.images[index].float().div(127.5).sub(1.0)
            assert torch.equal(real, torch.where(flip, expected.flip(3), expected))
            assert torch.equal(real_labels, reference.labels[index])


def speed_cfg(**overrides):
    cfg = copy.deepcopy(as_config(DEFAULTS).speed)
    cfg.update(overrides)
    return cfg


def test_resolve_auto_per_device_and_explicit_switches():
    cpu = resolve(speed_cfg(), "cpu")
    assert set(cpu) == {"compile", "channels_last", "fused_adam", "compile_mode"}
    off = resolve(speed_cfg(compile="off", channels_last="off", fused_adam="off"), "cpu")
    assert not (off["compile"] or off["channels_last"] or off["fused_adam"])
    assert resolve(speed_cfg(fused_adam="on"), "cpu")["fused_adam"]
    with pytest.raises(SpeedError, match="reduce-overhead records CUDA graphs: GPU only"):
        resolve(speed_cfg(compile_mode="reduce-overhead"), "cpu")


def test_compile_without_c_compiler_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr("genkd.speed.c_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C compiler"):
        assert not resolve(speed_cfg(compile="on"), "cpu")["compile"]


def one_iteration(settings, seed=0, batch=6, compile_backend=None, blocks=3):
    """Losses of 2 D steps + 1 G step of the training loop's arithmetic, from fixed seeds."""
    torch.manual_seed(seed)
    generator = Generator(NUM_CLASSES, width=4, shared_dim=0, blocks=blocks)
    discriminator = Discriminator(NUM_CLASSES, width=4, blocks=blocks)
    for module in (generator, discriminator):
        prepare_module(module, {**settings, "compile": False})
        if compile_backend:
            compile_in_place(module, backend=compile_backend)
    optimizer_g = adam(generator.parameters(), 2e-4, (0.0, 0.999), settings)
    optimizer_d = adam(discriminator.parameters(), 2e-4, (0.0, 0.999), settings)
    real = torch.rand(2, batch, 3, 32, 32) * 2 - 1
    losses = []
    for d_step in range(2):
        labels = torch.randint(NUM_CLASSES, (2 * batch,))
        with torch.no_grad():
            fake = generator(torch.randn(batch, 128), labels[batch:])
        logits = discriminator(diff_augment(torch.cat([real[d_step], fake]), "translation,cutout"), labels)
        loss_d = F.relu(1.0 - logits[:batch]).mean() + F.relu(1.0 + logits[batch:]).mean()
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()
        losses.append(loss_d.detach())
    discriminator.requires_grad_(False)
    labels = torch.randint(NUM_CLASSES, (batch,))
    loss_g = -discriminator(diff_augment(generator(torch.randn(batch, 128), labels), "translation"), labels).mean()
    optimizer_g.zero_grad(set_to_none=True)
    loss_g.backward()
    optimizer_g.step()
    discriminator.requires_grad_(True)
    losses.append(loss_g.detach())
    return torch.stack(losses), next(generator.parameters()).detach().clone()


EAGER = {"compile": False, "channels_last": False, "fused_adam": False, "compile_mode": "default"}


def test_fused_adam_and_channels_last_give_the_eager_losses():
    """Same arithmetic in another order: equal to float32 rounding (1e-5 relative) after a few steps."""
    expected, expected_weight = one_iteration(EAGER)
    for switch in ("fused_adam", "channels_last"):
        losses, weight = one_iteration({**EAGER, switch: True})
        torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(weight, expected_weight, rtol=1e-5, atol=1e-6)


def test_compiled_graphs_give_the_eager_losses():
    """Dynamo + AOTAutograd capture of G and D (forward, backward, the in-place power-iteration and batch-norm updates)
    run by the aot_eager backend: the graphs the inductor backend would compile, with eager kernels (seconds, not a
    minute of C++ builds). One block per net keeps the tracing short. Same losses to 1e-5."""
    torch._dynamo.reset()
    expected, expected_weight = one_iteration(EAGER, blocks=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, weight = one_iteration(EAGER, compile_backend="aot_eager", blocks=1)
    assert not [w for w in caught if "running it eagerly" in str(w.message)]  # a fallback would make this vacuous
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight, expected_weight, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
    not os.environ.get("GENKD_TEST_INDUCTOR") or c_compiler() is None,
    reason="inductor builds C++ kernels for a minute or more on 2 CPU cores: set GENKD_TEST_INDUCTOR=1 (needs cc); "
    "bench/gpu_check.sh sets it on CUDA",
)
def test_inductor_compiled_step_gives_the_eager_losses():
    torch._dynamo.reset()
    expected, _ = one_iteration(EAGER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, _ = one_iteration(EAGER, compile_backend="inductor")
    assert not [w for w in caught if "running it eagerly" in str(w.message)]
    torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-5)


def test_failed_compilation_falls_back_to_eager_with_a_warning():
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no kernels for this op")

    torch._dynamo.reset()
    expected, _ = one_iteration(EAGER, blocks=1)
    with pytest.warns(UserWarning, match="torch.compile of Generator failed, running it eagerly"):
        losses, _ = one_iteration(EAGER, compile_backend=broken_backend, blocks=1)
    assert torch.equal(losses, expected)  # the failed attempt changed nothing: eager from the first step
