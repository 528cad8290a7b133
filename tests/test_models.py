"""BigGAN-CIFAR generator and discriminator: shapes, conditioning, spectral norm, init, reference sizes."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from genkd.models import Discriminator, Generator, build_models

TINY = {"g_width": 4, "d_width": 4, "z_dim": 8, "shared_dim": 8, "g_blocks": 3, "d_blocks": 4}


@pytest.fixture
def real_batch(cifar10_arrays):
    x_train, y_train = cifar10_arrays[:2]
    images = torch.from_numpy(x_train[:6]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, torch.from_numpy(y_train[:6])


@pytest.mark.parametrize(("shared_dim", "g_blocks"), [(8, 3), (0, 2)])
def test_generator_shapes_range_and_conditioning(shared_dim, g_blocks):
    torch.manual_seed(0)
    generator, _ = build_models({**TINY, "shared_dim": shared_dim, "g_blocks": g_blocks}, num_classes=10)
    z, y = torch.randn(6, generator.z_dim), torch.arange(6)
    images = generator(z, y)  # training mode: batch statistics
    assert generator.z_dim == 8 and images.shape == (6, 3, 32, 32)
    assert images.abs().max() < 1.0 and images.std() > 0.01
    generator.eval()  # running statistics: each sample depends on its own (z, y) only
    images = generator(z, y)
    assert torch.allclose(generator(z[:1], y[:1]), images[:1], atol=1e-6)
    other_class = generator(z, (y + 1) % 10)
    assert (other_class - images).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # the class changes every sample
    assert torch.equal(generator(z, y), images)


def test_discriminator_logits_features_and_projection(real_batch):
    torch.manual_seed(0)
    _, discriminator = build_models(TINY, num_classes=10)
    images, labels = real_batch
    logits, features = discriminator(images, labels, return_features=True)
    assert discriminator.feature_dim == 16 and logits.shape == (6,) and features.shape == (6, 16)
    assert (features >= 0).all()  # sum pooling of ReLU outputs
    discriminator.eval()  # fixed spectral-norm estimates, so that calls can be compared
    logits, features = discriminator(images, labels, return_features=True)
    assert torch.equal(discriminator(images, labels), logits)
    # Projection discriminator: changing the class adds (embed[b] - embed[a]) . features and nothing else.
    other = (labels + 3) % 10
    embed = discriminator.embed.weight
    expected = logits + ((embed[other] - embed[labels]) * features).sum(dim=1)
    assert torch.allclose(discriminator(images, other), expected, atol=1e-5)
    assert not torch.allclose(discriminator(images, other), logits, atol=1e-4)


def test_discriminator_downsamples_like_the_reference_arch():
    """D_arch[32] of the reference: the first two blocks halve the size (32 -> 16 -> 8), the others keep 8x8."""
    discriminator = Discriminator(num_classes=10, width=2, blocks=4)
    sizes, h = [], torch.zeros(1, 3, 32, 32)
    for block in discriminator.blocks:
        h = block(h)
        sizes.append(h.shape[-1])
    assert sizes == [16, 8, 8, 8]
    assert [isinstance(block.shortcut, nn.Identity) for block in discriminator.blocks] == [False, False, True, True]


def test_gradients_reach_every_parameter(real_batch):
    torch.manual_seed(0)
    generator, discriminator = build_models(TINY, num_classes=10)
    images, labels = real_batch
    loss = discriminator(generator(torch.randn(6, 8), labels), labels).mean() + discriminator(images, labels).mean()
    loss.backward()
    for name, parameter in [*generator.named_parameters(), *discriminator.named_parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def weight_layers(model):
    kinds = (nn.Conv2d, nn.Linear, nn.Embedding)
    return [(name, module) for name, module in model.named_modules() if isinstance(module, kinds)]


def test_spectral_norm_on_every_conv_and_linear_layer():
    torch.manual_seed(0)
    generator, discriminator = build_models({**TINY, "g_width": 2, "d_width": 2}, num_classes=10)
    layers = weight_layers(generator) + weight_layers(discriminator)
    # G: shared, linear, 3 x (2 conv, shortcut, 4 class maps), output conv; D: 10 conv, linear, embed
    assert len(layers) == 36
    for name, module in layers:
        # G's class embeddings stay plain, as in the reference; D's projection embedding is normalised.
        plain = isinstance(module, nn.Embedding) and any(module is m for _, m in weight_layers(generator))
        assert parametrize.is_parametrized(module, "weight") != plain, name
        if plain:
            continue
        assert module.parametrizations.weight[0].eps == 1e-8, name  # the reference's --SN_eps
        for _ in range(100):  # every read of .weight in training mode runs one power iteration
            module.weight
        sigma = torch.linalg.matrix_norm(module.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=1e-2), name
        assert torch.linalg.matrix_norm(module.parametrizations.weight.original.detach().flatten(1), ord=2) < 0.9, name


def test_power_iteration_vectors_resume_exactly(real_batch):
    """u and v are in the state dict, so a reloaded D continues the same power iteration (exact resume)."""
    images, labels = real_batch
    torch.manual_seed(0)
    trained = Discriminator(num_classes=10, width=4)
    for _ in range(3):
        trained(images, labels)
    assert any(key.endswith("._u") for key in trained.state_dict())
    torch.manual_seed(1)
    reloaded = Discriminator(num_classes=10, width=4)
    reloaded.load_state_dict(trained.state_dict())
    for _ in range(2):
        assert torch.equal(reloaded(images, labels), trained(images, labels))


def test_init_is_normal_002():
    torch.manual_seed(0)
    generator, discriminator = build_models({**TINY, "g_width": 8, "d_width": 8}, num_classes=10)
    for name, module in weight_layers(generator) + weight_layers(discriminator):
        weight = module.parametrizations.weight.original if parametrize.is_parametrized(module) else module.weight
        if weight.numel() >= 2000:
            assert weight.std().item() == pytest.approx(0.02, rel=0.1), name
            assert abs(weight.mean().item()) < 0.003, name


def test_reference_widths_give_the_reference_parameter_counts():
    """Hand count of the reference's BigGAN-CIFAR-10 (G_ch = D_ch = 64, no G_shared as in its scripts):
    G: linear 128->4096 (528,384) + 3 blocks x (2 conv3x3 256->256, 1x1 shortcut, 4 class embeddings of 10x256)
    (1,256,192 each) + BN (512) + conv3x3 256->3 (6,915) = 4,304,387.
    D: block 0 (598,272) + block 1 (1,245,952) + 2 blocks without shortcut (1,180,160 each) + linear (257)
    + projection embedding (2,560) = 4,207,361."""
    counts = {}
    for shared_dim in (0, 128):
        cfg = {"g_width": 64, "d_width": 64, "z_dim": 128, "shared_dim": shared_dim, "g_blocks": 3, "d_blocks": 4}
        generator, discriminator = build_models(cfg, num_classes=10)
        counts[shared_dim] = [sum(p.numel() for p in model.parameters()) for model in (generator, discriminator)]
    print(f"parameters at width 64, CIFAR-10: G {counts[0][0]:,} (per-layer class embeddings), "
          f"G {counts[128][0]:,} (shared 128-d embedding), D {counts[0][1]:,}")  # fmt: skip
    assert counts[0] == [4_304_387, 4_207_361]
    # Shared: + 10x128 embedding, and the 4 class maps per block become 128x256 linear maps.
    assert counts[128][0] == 4_304_387 + 1_280 + 3 * 4 * (128 - 10) * 256


def test_generator_block_count_is_checked():
    with pytest.raises(ValueError, match=r"1 to 5 up-sampling blocks for 32x32 images, got 6"):
        Generator(num_classes=10, width=2, blocks=6)


def test_default_conditioning_is_the_references_per_layer_embeddings():
    """model.shared_dim defaults to 0 (G_shared off in every reference script): each conditional batch norm owns
    plain (n_classes, channels) embeddings and the output is bn(x) * (1 + gain[y]) + bias[y]."""
    from genkd.defaults import DEFAULTS

    assert DEFAULTS["model"]["shared_dim"] == 0
    generator = Generator(num_classes=10, width=2)
    assert isinstance(generator.shared, nn.Identity)
    norm = generator.blocks[0].bn1
    assert isinstance(norm.gain, nn.Embedding) and norm.gain.weight.shape == (10, 8)
    assert not parametrize.is_parametrized(norm.gain) and (norm.norm.eps, norm.norm.momentum) == (1e-5, 0.1)
    torch.manual_seed(0)
    x, y = torch.randn(5, 8, 4, 4), torch.tensor([0, 3, 3, 9, 1])
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    gain, bias = norm.gain.weight[y, :, None, None], norm.bias.weight[y, :, None, None]
    expected = (x - mean) / torch.sqrt(var + 1e-5) * (1 + gain) + bias
    assert torch.allclose(norm(x, y), expected, atol=1e-5)
