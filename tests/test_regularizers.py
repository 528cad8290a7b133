"""The discriminator regularisers against their definitions, written out here independently of genkd/regularizers.py."""
import pytest
import torch

from genkd.config import ConfigError, load_config
from genkd.defaults import CHECKS, CHOICES, DEFAULTS
from genkd.diffaug import diff_augment
from genkd.regularizers import Consistency, LeCam, Regularizers


def reg_config(*argv):
    return load_config(DEFAULTS, list(argv), choices=CHOICES, checks=CHECKS).reg


class ReferenceEma:
    """lecam-gan third_party/utils.py ``ema_losses``, restated: Python floats, init 1000, a plain copy below start."""

    def __init__(self, decay, start):
        self.real = self.fake = 1000.0
        self.decay, self.start = decay, start

    def update(self, real_mean, fake_mean, itr):
        decay = 0.0 if itr < self.start else self.decay
        self.real = self.real * decay + real_mean * (1 - decay)
        self.fake = self.fake * decay + fake_mean * (1 - decay)


def lecam_definition(real, fake, ema_real, ema_fake):
    """mean_i relu(D(x_i) - ema_fake)^2 + mean_j relu(ema_real - D(G(z_j)))^2, one element at a time."""
    real_part = sum(max(0.0, r - ema_fake) ** 2 for r in real.tolist()) / len(real)
    fake_part = sum(max(0.0, ema_real - f) ** 2 for f in fake.tolist()) / len(fake)
    return real_part + fake_part


def test_lecam_ema_follows_the_reference_recurrence_exactly():
    torch.manual_seed(0)
    lecam, reference = LeCam(decay=0.9, start=3), ReferenceEma(decay=0.9, start=3)
    for step in range(7):
        for _ in range(4):  # four discriminator steps per generator step, each updates the EMA
            real, fake = torch.randn(5) + 1, torch.randn(5) - 1
            lecam(real, fake, None, step)
            reference.update(real.mean().item(), fake.mean().item(), step)
            assert lecam.ema.tolist() == [reference.real, reference.fake]  # bit for bit: same float64 arithmetic
        if step < 3:  # a plain copy of the last batch's means before start
            assert lecam.ema.tolist() == [real.mean().item(), fake.mean().item()]


def test_lecam_term_equals_its_definition_with_the_updated_ema_and_starts_after_start():
    torch.manual_seed(1)
    real = torch.randn(6, requires_grad=True)
    fake = torch.randn(6, requires_grad=True)
    lecam = LeCam(decay=0.9, start=10)
    lecam.load_state_dict({"ema": torch.tensor([0.3, -0.2], dtype=torch.float64)})
    term = lecam(real, fake, None, step=11)
    ema_real = 0.3 * 0.9 + real.mean().item() * (1 - 0.9)  # the EMA takes this batch first, then the term reads it
    ema_fake = -0.2 * 0.9 + fake.mean().item() * (1 - 0.9)
    assert term.item() == pytest.approx(lecam_definition(real, fake, ema_real, ema_fake), rel=1e-6)
    term.backward()  # the EMA is a constant: d/dD(x_i) = 2 relu(D(x_i) - ema_fake) / n, no term through the mean
    assert torch.allclose(real.grad, 2 * (real.detach() - ema_fake).relu() / 6, atol=1e-7)
    assert torch.allclose(fake.grad, -2 * (ema_real - fake.detach()).relu() / 6, atol=1e-7)

    at_start = LeCam(decay=0.9, start=10)
    assert at_start(real, fake, None, step=10).item() == 0.0  # the reference applies it for itr > start only
    assert at_start.ema.tolist() != [1000.0, 1000.0]  # ... but the EMA tracked the batch


def test_lecam_averages_the_batch_means_over_processes():
    other_process = torch.tensor([3.0, -5.0])
    lecam = LeCam(decay=0.9, start=100, reduce_mean=lambda means: (means + other_process) / 2)
    lecam(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0]), None, step=0)
    assert lecam.ema.tolist() == [(1.5 + 3.0) / 2, (1.0 - 5.0) / 2]


def test_consistency_term_is_the_mean_squared_logit_difference_through_both_views():
    real = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    view = torch.tensor([1.0, -1.0, 0.0], requires_grad=True)
    term = Consistency("")(real, torch.zeros(3), view, step=0)
    assert term.item() == pytest.approx(((1.0 - 0.5) ** 2 + 0.0 + (0.0 - 2.0) ** 2) / 3)
    term.backward()
    assert torch.allclose(view.grad, 2 * (view - real).detach() / 3) and torch.allclose(real.grad, -view.grad)


def test_consistency_views_follow_cr_augment():
    torch.manual_seed(2)
    real, augmented = torch.rand(64, 3, 8, 8) * 2 - 1, torch.rand(64, 3, 8, 8) * 2 - 1
    assert Consistency("").view(real, augmented) is real  # the 10 % / 20 % scripts: the un-augmented reals
    flipped = Consistency("flip").view(real, augmented)  # a mirror of the augmented reals, half of the time
    mirrored = [torch.equal(v, a.flip(2)) for v, a in zip(flipped, augmented)]
    assert all(m or torch.equal(v, a) for m, v, a in zip(mirrored, flipped, augmented)) and 16 < sum(mirrored) < 48
    torch.manual_seed(3)
    translated = Consistency("translation").view(real, augmented)
    torch.manual_seed(3)
    assert torch.equal(translated, diff_augment(augmented, "translation"))


def test_configured_terms_share_one_discriminator_batch_and_add_up_with_their_weights():
    none = Regularizers(reg_config())
    assert not none.terms
    images, labels = none.extra_views(torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8), torch.arange(4))
    assert images.shape == (0, 3, 8, 8) and labels.shape == (0,)
    total, terms = none(torch.randn(8), 4, step=5)
    assert total.item() == 0.0 and terms == {}

    both = Regularizers(reg_config("--reg.lecam_weight", "0.3", "--reg.lecam_start", "0", "--reg.cr_weight", "10",
                                   "--reg.cr_augment", ""))  # fmt: skip
    real, labels = torch.rand(4, 3, 8, 8), torch.tensor([3, 1, 4, 1])
    images, view_labels = both.extra_views(real, real.flip(3), labels)
    assert torch.equal(images, real) and torch.equal(view_labels, labels)  # CR's view, the real batch's classes
    logits = torch.randn(12)  # [augmented real | augmented fake | CR view]
    total, terms = both(logits, 4, step=1)
    ema = 1000.0 * 0.9 + torch.stack([logits[:4].mean(), logits[4:8].mean()]).double() * 0.1  # start 0: decays at once
    expected_lecam = lecam_definition(logits[:4], logits[4:8], ema[0].item(), ema[1].item())
    assert terms["lecam"].item() == pytest.approx(expected_lecam, rel=1e-6)
    assert terms["cr"].item() == pytest.approx((logits[8:] - logits[:4]).pow(2).mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(0.3 * terms["lecam"].item() + 10 * terms["cr"].item(), rel=1e-6)

    restored = Regularizers(reg_config("--reg.lecam_weight", "0.3"))
    restored.load_state_dict(both.state_dict())
    assert torch.equal(restored.terms["lecam"][1].ema, both.terms["lecam"][1].ema)


def test_reg_keys_reject_bad_values_with_the_accepted_range():
    with pytest.raises(ConfigError, match="a loss weight >= 0"):
        reg_config("--reg.lecam_weight", "-1")
    with pytest.raises(ConfigError, match="a decay in"):
        reg_config("--reg.lecam_decay", "1.0")
    with pytest.raises(ConfigError, match="flip, color, translation, cutout"):
        reg_config("--reg.cr_augment", "flip,rotate")
