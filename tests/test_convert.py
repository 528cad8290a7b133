"""genkd.convert: reference-layout (BigGAN-PyTorch / DiffAugment-biggan-cifar) state dicts give the same outputs in
genkd's models. The reference layout and forward below are written from reading DiffAugment-biggan-cifar layers.py
(SN, SNConv2d, SNLinear, SNEmbedding, ccbn, bn, GBlock, DBlock) and BigGAN.py (Generator, Discriminator, G_arch[32],
D_arch[32]), with the scripts' flags (G_shared off, no attention, SN_eps 1e-8, BN eps 1e-5, momentum 0.1)."""
import pytest
import torch
import torch.nn.functional as F

from genkd.checkpoint import load_generator
from genkd.convert import (
    ConversionError,
    convert_discriminator,
    convert_generator,
    convert_run,
    main,
    power_vectors,
)
from genkd.sampling import sampling_mode

EPS = 1e-8
CLASSES, WIDTH, Z_DIM = 10, 4, 16  # channels 4 * WIDTH = 16


# ---- reference layout: every tensor the reference's modules register, with its shape


def sn_layer(state, name, weight_shape, bias=True, converged=False):
    """SNConv2d / SNLinear / SNEmbedding: weight (+ bias), u0 (1, rows), sv0 (1,) (layers.SN.__init__)."""
    weight = torch.randn(weight_shape) * 0.1
    state[f"{name}.weight"] = weight
    if bias:
        state[f"{name}.bias"] = torch.randn(weight_shape[0]) * 0.1
    if converged:  # the top left singular vector: a fixed point of the power iteration (a trained model's)
        state[f"{name}.u0"] = torch.linalg.svd(weight.flatten(1).double())[0][:, 0].float()[None] * 3.0
    else:  # any direction, any scale: G_ema's u is an EMA of G's u
        state[f"{name}.u0"] = torch.randn(1, weight_shape[0]) * 2.0
    state[f"{name}.sv0"] = torch.rand(1) + 0.5  # the last training value; the forward never reads it


def reference_generator_state(converged=False, shared_dim=0, blocks=3):
    torch.manual_seed(0)
    channels, state = 4 * WIDTH, {}
    sn_layer(state, "linear", (channels * 16, Z_DIM), converged=converged)
    if shared_dim:
        state["shared.weight"] = torch.randn(CLASSES, shared_dim)
    for index in range(blocks):
        prefix = f"blocks.{index}.0"
        for conv, kernel in (("conv1", 3), ("conv2", 3), ("conv_sc", 1)):
            sn_layer(state, f"{prefix}.{conv}", (channels, channels, kernel, kernel), converged=converged)
        for bn in ("bn1", "bn2"):
            for part in ("gain", "bias"):
                if shared_dim:  # SNLinear(shared_dim, channels, bias=False)
                    sn_layer(state, f"{prefix}.{bn}.{part}", (channels, shared_dim), bias=False, converged=converged)
                else:  # nn.Embedding(n_classes, channels)
                    state[f"{prefix}.{bn}.{part}.weight"] = torch.randn(CLASSES, channels) * 0.3
            state[f"{prefix}.{bn}.stored_mean"] = torch.randn(channels) * 0.2
            state[f"{prefix}.{bn}.stored_var"] = torch.rand(channels) + 0.5
    state["output_layer.0.gain"] = 1 + torch.randn(channels) * 0.1
    state["output_layer.0.bias"] = torch.randn(channels) * 0.1
    state["output_layer.0.stored_mean"] = torch.randn(channels) * 0.2
    state["output_layer.0.stored_var"] = torch.rand(channels) + 0.5
    sn_layer(state, "output_layer.2", (3, channels, 3, 3), converged=converged)
    return state


def reference_discriminator_state(converged=False, kd_dlgan_head=False):
    torch.manual_seed(1)
    channels, state = 4 * WIDTH, {}
    for index, in_channels in enumerate([3, channels, channels, channels]):
        prefix = f"blocks.{index}.0"
        sn_layer(state, f"{prefix}.conv1", (channels, in_channels, 3, 3), converged=converged)
        sn_layer(state, f"{prefix}.conv2", (channels, channels, 3, 3), converged=converged)
        if index < 2:  # learnable shortcut: channels change or the block down-samples
            sn_layer(state, f"{prefix}.conv_sc", (channels, in_channels, 1, 1), converged=converged)
    sn_layer(state, "linear", (1, channels), converged=converged)
    sn_layer(state, "embed", (CLASSES, channels), bias=False, converged=converged)
    if kd_dlgan_head:
        sn_layer(state, "linear_cls_1", (1024, channels))
        sn_layer(state, "linear_cls_2", (512, 1024))
    return state


# ---- reference forward, from the reading above


def sn_weight(state, name, training):
    """layers.SN.W_: one power-iteration step from u (stored in training), divide by the fresh sigma."""
    weight, u = state[f"{name}.weight"], state[f"{name}.u0"]
    matrix = weight.view(weight.size(0), -1)
    v = F.normalize(u @ matrix, eps=EPS)
    u = F.normalize(v @ matrix.t(), eps=EPS)
    if training:
        state[f"{name}.u0"] = u
        state[f"{name}.sv0"] = (v @ matrix.t() @ u.t()).reshape(1)
    return weight / (v @ matrix.t() @ u.t()).squeeze()


def sn_conv(state, name, x, training, padding):
    return F.conv2d(x, sn_weight(state, name, training), state[f"{name}.bias"], padding=padding)


def ccbn(state, name, x, y, training, shared):
    if shared:  # SNLinear(bias=False) of the shared embedding
        gain = 1 + F.linear(y, sn_weight(state, f"{name}.gain", training))
        bias = F.linear(y, sn_weight(state, f"{name}.bias", training))
    else:
        gain, bias = 1 + state[f"{name}.gain.weight"][y], state[f"{name}.bias.weight"][y]
    out = F.batch_norm(x, state[f"{name}.stored_mean"], state[f"{name}.stored_var"], None, None, training, 0.1, 1e-5)
    return out * gain[:, :, None, None] + bias[:, :, None, None]


def reference_generator(state, z, y, training):
    """BigGAN.Generator.forward(z, G.shared(y)) at resolution 32; ``state`` is updated as the reference's buffers."""
    shared = "shared.weight" in state
    condition = state["shared.weight"][y] if shared else y
    h = F.linear(z, sn_weight(state, "linear", training), state["linear.bias"]).view(len(z), -1, 4, 4)
    blocks = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    for index in range(blocks):
        prefix, x = f"blocks.{index}.0", h
        h = F.relu(ccbn(state, f"{prefix}.bn1", h, condition, training, shared))
        h, x = F.interpolate(h, scale_factor=2), F.interpolate(x, scale_factor=2)
        h = sn_conv(state, f"{prefix}.conv1", h, training, 1)
        h = F.relu(ccbn(state, f"{prefix}.bn2", h, condition, training, shared))
        h = sn_conv(state, f"{prefix}.conv2", h, training, 1)
        h = h + sn_conv(state, f"{prefix}.conv_sc", x, training, 0)
    h = F.batch_norm(h, state["output_layer.0.stored_mean"], state["output_layer.0.stored_var"],
                     state["output_layer.0.gain"], state["output_layer.0.bias"], training, 0.1, 1e-5)  # fmt: skip
    return torch.tanh(sn_conv(state, "output_layer.2", F.relu(h), training, 1))


def reference_discriminator(state, x, y, training):
    """BigGAN.Discriminator.forward: DBlocks (wide, preactivation after the first, D_arch[32] down-sampling)."""
    h = x
    for index in range(4):
        prefix, preactivation, downsample = f"blocks.{index}.0", index > 0, index < 2
        block_input = h
        h = F.relu(h) if preactivation else h
        h = sn_conv(state, f"{prefix}.conv1", h, training, 1)
        h = sn_conv(state, f"{prefix}.conv2", F.relu(h), training, 1)
        if downsample:
            h = F.avg_pool2d(h, 2)
        shortcut = block_input
        learnable = f"{prefix}.conv_sc.weight" in state
        if preactivation:
            shortcut = sn_conv(state, f"{prefix}.conv_sc", shortcut, training, 0) if learnable else shortcut
            shortcut = F.avg_pool2d(shortcut, 2) if downsample else shortcut
        else:
            shortcut = F.avg_pool2d(shortcut, 2) if downsample else shortcut
            shortcut = sn_conv(state, f"{prefix}.conv_sc", shortcut, training, 0) if learnable else shortcut
        h = h + shortcut
    h = torch.sum(F.relu(h), [2, 3])
    out = F.linear(h, sn_weight(state, "linear", training), state["linear.bias"])
    embed = F.embedding(y, sn_weight(state, "embed", training))
    return out + torch.sum(embed * h, 1, keepdim=True)


def relative_error(actual, expected):
    return ((actual - expected).norm() / expected.norm()).item()


def inputs(batch=8):
    torch.manual_seed(2)
    return torch.randn(batch, Z_DIM), torch.randint(CLASSES, (batch,))


# ---- tests


@pytest.mark.parametrize("shared_dim", [0, 8])
def test_generator_eval_mode_matches_the_reference_for_any_stored_u(shared_dim):
    state = reference_generator_state(shared_dim=shared_dim)
    generator, settings = convert_generator(state)
    assert settings == {"g_width": WIDTH, "z_dim": Z_DIM, "shared_dim": shared_dim, "g_blocks": 3, "num_classes": 10}
    z, y = inputs()
    expected = reference_generator(dict(state), z, y, training=False)
    with torch.no_grad():
        actual = generator.eval()(z, y)
    print(f"G eval, shared_dim {shared_dim}: relative error {relative_error(actual, expected):.2e}")
    assert relative_error(actual, expected) < 1e-5
    assert torch.equal(generator(z, y), actual)  # eval mode writes nothing: a second call is the same


def test_generator_train_mode_matches_the_references_train_mode():
    """The reference samples G_ema in train mode: batch statistics, and sigma from the stored u (its update only
    affects the next call). genkd's train-mode sampling gives the same images, and writes nothing."""
    state = reference_generator_state()
    generator, _ = convert_generator(state)
    before = {key: value.clone() for key, value in generator.state_dict().items()}
    z, y = inputs()
    reference_state = {key: value.clone() for key, value in state.items()}
    expected = reference_generator(reference_state, z, y, training=True)
    with torch.no_grad(), sampling_mode(generator, "train"):
        actual = generator(z, y)
    print(f"G train (sampling): relative error {relative_error(actual, expected):.2e}")
    assert relative_error(actual, expected) < 1e-5
    assert all(torch.equal(before[key], value) for key, value in generator.state_dict().items())
    # The reference's train step moved its running statistics; converting its new state keeps eval mode equal.
    assert not torch.equal(reference_state["blocks.0.0.bn1.stored_mean"], state["blocks.0.0.bn1.stored_mean"])
    generator, _ = convert_generator(reference_state)
    with torch.no_grad():
        assert relative_error(generator.eval()(z, y), reference_generator(dict(reference_state), z, y, False)) < 1e-5


def test_full_training_mode_matches_with_converged_vectors():
    """In module training mode both nets take a power-iteration step before dividing: torch's half-step order
    differs from the reference's, which agrees once u is the top singular vector (any trained checkpoint)."""
    z, y = inputs()
    state = reference_generator_state(converged=True)
    generator, _ = convert_generator(state)
    expected = reference_generator({k: v.clone() for k, v in state.items()}, z, y, training=True)
    with torch.no_grad():
        actual = generator.train()(z, y)
    print(f"G train (module train mode, converged u): relative error {relative_error(actual, expected):.2e}")
    assert relative_error(actual, expected) < 1e-5
    state = reference_discriminator_state(converged=True)
    discriminator, _, _ = convert_discriminator(state)
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    expected = reference_discriminator({k: v.clone() for k, v in state.items()}, images, y, training=True)
    with torch.no_grad():
        actual = discriminator.train()(images, y)
    assert relative_error(actual, expected.squeeze(1)) < 1e-5


def test_discriminator_matches_the_reference_and_skips_the_kd_dlgan_head(cifar10_arrays):
    state = reference_discriminator_state(kd_dlgan_head=True)
    discriminator, settings, skipped = convert_discriminator(state)
    assert settings == {"d_width": WIDTH, "d_blocks": 4, "num_classes": 10}
    assert sorted({key.rsplit(".", 1)[0] for key in skipped}) == ["linear_cls_1", "linear_cls_2"]
    x_train, y_train = cifar10_arrays[:2]
    images = torch.from_numpy(x_train[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = torch.from_numpy(y_train[:8])
    expected = reference_discriminator(dict(state), images, labels, training=False)
    with torch.no_grad():
        actual = discriminator.eval()(images, labels)
    print(f"D eval: relative error {relative_error(actual, expected.squeeze(1)):.2e}")
    assert expected.shape == (8, 1) and relative_error(actual, expected.squeeze(1)) < 1e-5


def test_power_vectors_give_the_references_sigma():
    torch.manual_seed(3)
    weight, u = torch.randn(6, 5, 3, 3), torch.randn(1, 6) * 4
    _u, _v = power_vectors(weight, u)
    matrix = weight.flatten(1)
    v = F.normalize(u @ matrix, eps=EPS)
    reference_sigma = (v @ matrix.t() @ F.normalize(v @ matrix.t(), eps=EPS).t()).item()
    assert (_u @ matrix @ _v).item() == pytest.approx(reference_sigma, rel=1e-6)
    assert _u.norm().item() == pytest.approx(1.0) and _v.norm().item() == pytest.approx(1.0)
    assert reference_sigma < torch.linalg.matrix_norm(matrix, ord=2).item()  # one step from a random u: an estimate


def test_bad_state_dicts_say_what_is_wrong():
    state = reference_generator_state()
    state["blocks.0.0.attention.gamma"] = torch.zeros(())
    with pytest.raises(ConversionError, match=r"'blocks.0.0.attention' has no genkd counterpart \(attention"):
        convert_generator(state)
    state = reference_generator_state()
    del state["linear.u0"], state["linear.sv0"]
    with pytest.raises(ConversionError, match=r"reference linear is not spectrally normalised but genkd's linear is"):
        convert_generator(state)
    with pytest.raises(ConversionError, match=r"not a BigGAN discriminator state dict"):
        convert_discriminator(reference_generator_state())


def test_convert_run_writes_a_checkpoint_genkd_evaluates(tmp_path, capsys):
    weights = tmp_path / "weights" / "DiffAugment-biggan-cifar10-0.1"
    weights.mkdir(parents=True)
    g_state, d_state = reference_generator_state(), reference_discriminator_state()
    torch.save(g_state, weights / "G_ema_best.pth")
    torch.save({**g_state, "linear.bias": g_state["linear.bias"] + 1}, weights / "G_best.pth")
    torch.save(d_state, weights / "D_best.pth")
    torch.save({"itr": 4000, "best_IS": 0, "best_FID": 999999}, weights / "state_dict_best.pth")
    path = convert_run(weights, tmp_path / "run", suffix="best")
    assert load_generator(path).step == 4000  # the reference's iteration, from its state_dict_best.pth
    assert path == tmp_path / "run" / "checkpoints" / "best.pt" and (tmp_path / "run" / "config.yaml").is_file()
    generator, cfg, num_classes, *_ = load_generator(path)
    assert num_classes == 10 and cfg.data.dataset == "cifar10"
    assert (cfg.model.g_width, cfg.model.d_width, cfg.model.shared_dim, cfg.model.z_dim) == (WIDTH, WIDTH, 0, Z_DIM)
    z, y = inputs()
    with torch.no_grad():
        assert relative_error(generator(z, y), reference_generator(dict(g_state), z, y, False)) < 1e-5
    state = torch.load(path, weights_only=True)
    assert {"G", "D", "G_ema"} <= state.keys()
    assert not torch.equal(state["G"]["linear.bias"], state["G_ema"]["linear.bias"])  # each from its own file
    # One published generator file, through the command line (python -m genkd.convert runs main), with an override.
    torch.save(g_state, tmp_path / "DiffAugment-biggan-cifar10-0.1.pth")
    main([str(tmp_path / "DiffAugment-biggan-cifar10-0.1.pth"), "--out", str(tmp_path / "published"),
          "--eval.sample_mode", "eval"])  # fmt: skip
    assert "checkpoints/last.pt: evaluate with python eval/evaluate.py" in capsys.readouterr().out
    generator, cfg, *_ = load_generator(tmp_path / "published")
    assert cfg.eval.sample_mode == "eval"
    with torch.no_grad():
        assert relative_error(generator(z, y), reference_generator(dict(g_state), z, y, False)) < 1e-5
    with pytest.raises(SystemExit, match=r"^error: .*nothing not found: pass a reference weights folder"):
        main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
