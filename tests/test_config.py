import pytest

from genkd.config import ConfigError, load_config
from genkd.defaults import DEFAULTS, gan_config, protocol_steps


def test_overrides_files_and_aliases(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("train:\n  batch_size: 16\n  betas: [0.5, 0.9]\ndata:\n  frac: 0.5\n")
    cfg = gan_config(["--config", str(config_file), "--data-frac", "0.1", "--train.d-steps=2", "--distill.enabled"])
    assert cfg.train.batch_size == 16  # from the file
    assert cfg.train.betas == [0.5, 0.9]
    assert cfg.data.frac == 0.1  # the command line wins over the file
    assert cfg.train.d_steps == 2
    assert gan_config(["--train.g-lr", "1e-4"]).train.g_lr == 1e-4  # YAML 1.1 alone would read a string
    assert cfg.distill.enabled is True  # a bare flag means true
    assert cfg.run_dir == "runs/cifar10-0.1-kd-whitening"


def test_paper_steps_follow_dataset_and_fraction():
    assert gan_config(["--data-frac", "0.1"]).train.steps == 125_000
    assert gan_config(["--dataset", "cifar100"]).train.steps == 500_000
    assert gan_config(["--dataset", "cifar100", "--data-frac", "0.2"]).train.steps == 250_000
    assert gan_config(["--train.steps", "7"]).train.steps == 7
    assert protocol_steps("cifar10", 0.15) in (125_000, 250_000)


def test_unknown_key_lists_accepted_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.batchsize'; accepted keys in train: .*batch_size"):
        gan_config(["--train.batchsize", "32"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'"):
        gan_config(["--trian.steps", "3"])


def test_unknown_key_in_file(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'"):
        gan_config(["--config", str(config_file)])


@pytest.mark.parametrize("frac", ["0", "-0.1", "1.5"])
def test_fraction_outside_unit_interval_is_rejected(frac):
    with pytest.raises(ConfigError, match=r"'data.frac'.*expected a fraction in \(0, 1\]"):
        gan_config(["--data-frac", frac])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train.batch-size", "ten"], r"bad value for 'train.batch_size': 'ten' \(expected int"),
        (["--train.batch-size", "3.5"], r"expected int"),
        (["--distill.norm", "batchnorm"], r"accepted: none, layernorm, whitening"),
        (["--train.diffaug", "color,zoom"], r"subset of color, translation, cutout"),
        (["--train", "3"], r"'train' is a section"),
        (["stray"], r"unexpected argument 'stray'"),
        (["--config", "missing.yaml"], r"config file not found: missing.yaml"),
    ],
)
def test_bad_values_say_what_is_accepted(argv, message):
    with pytest.raises(ConfigError, match=message):
        gan_config(argv)


def test_defaults_table_is_not_mutated():
    cfg = load_config(DEFAULTS, ["--train.betas", "[0.5, 0.9]"])
    cfg.train.betas.append(1.0)
    assert DEFAULTS["train"]["betas"] == [0.0, 0.999]
