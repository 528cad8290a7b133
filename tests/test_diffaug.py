"""DiffAugment on real CIFAR images: each augmentation's exact effect, per-sample randomness, differentiability."""
import pytest
import torch

from genkd.diffaug import AUGMENTATIONS, brightness, contrast, cutout, diff_augment, saturation, translation


@pytest.fixture(scope="module")
def images(cifar10_arrays):
    """32 real images as float64 NCHW in [-1, 1]; no pixel is exactly 0 (that would need the value 127.5)."""
    x = torch.from_numpy(cifar10_arrays[0][:32]).permute(0, 3, 1, 2).double() / 127.5 - 1.0
    assert (x != 0).all()
    return x


def shifted(image, dy, dx):
    """``image`` moved down by dy and right by dx pixels, zero-filled: the reference for translation."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    out[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
        :, max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
    ]
    return out


def test_translation_is_a_zero_filled_shift_of_at_most_an_eighth(images):
    torch.manual_seed(0)
    out = translation(images)
    shifts = []
    for image, moved in zip(images, out):
        matches = [(dy, dx) for dy in range(-6, 7) for dx in range(-6, 7) if torch.equal(moved, shifted(image, dy, dx))]
        assert len(matches) == 1, matches
        shifts.append(matches[0])
    assert all(abs(dy) <= 32 / 8 and abs(dx) <= 32 / 8 for dy, dx in shifts)
    assert len(set(shifts)) > 10  # per-sample shifts
    assert {dy for dy, _ in shifts} >= {-4, 4} or {dx for _, dx in shifts} >= {-4, 4}  # the full range is used


def test_cutout_zeroes_exactly_one_clipped_half_size_square(images):
    torch.manual_seed(0)
    out = cutout(images)
    tops = set()
    for image, cut in zip(images, out):
        zeroed = (cut == 0).all(dim=0)
        rows, cols = zeroed.any(dim=1).nonzero().flatten(), zeroed.any(dim=0).nonzero().flatten()
        assert zeroed.sum() == len(rows) * len(cols)  # a rectangle ...
        for span in (rows, cols):  # contiguous
            assert torch.equal(span, torch.arange(span[0], span[-1] + 1))
        for span in (rows, cols):  # ... of side 16, clipped only at the image border (at least half of it inside)
            assert len(span) == 16 or (8 <= len(span) < 16 and (span[0] == 0 or span[-1] == 31))
        assert torch.equal(cut[:, ~zeroed], image[:, ~zeroed])  # everything else untouched
        tops.add((rows[0].item(), cols[0].item()))
    assert len(tops) > 10  # per-sample positions


def recovered_factor(out, x, center):
    """The factor s with out - center(out) = s * (x - center(x)), checking that it is one number per sample."""
    moved, original = (out - center(out)).flatten(1), (x - center(x)).flatten(1)
    factor = (moved * original).sum(dim=1) / (original * original).sum(dim=1)  # least squares
    assert torch.allclose(moved, factor[:, None] * original, atol=1e-9)
    return factor


def test_color_transforms_have_their_documented_form(images):
    torch.manual_seed(0)
    offset = (brightness(images) - images).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-12)
    assert offset.abs().max() <= 0.5 and offset[:, 0].std() > 0.1

    def channel_mean(t):
        return t.mean(dim=1, keepdim=True)

    def image_mean(t):
        return t.mean(dim=(1, 2, 3), keepdim=True)

    out = saturation(images)
    assert torch.allclose(channel_mean(out), channel_mean(images), atol=1e-12)  # the grey value stays
    factor = recovered_factor(out, images, channel_mean)
    assert factor.min() >= 0 and factor.max() <= 2 and factor.std() > 0.3
    out = contrast(images)
    assert torch.allclose(image_mean(out), image_mean(images), atol=1e-12)
    factor = recovered_factor(out, images, image_mean)
    assert factor.min() >= 0.5 and factor.max() <= 1.5 and factor.std() > 0.15


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_augmentations_are_differentiable(images, policy):
    """Exact gradients (gradcheck, the random draw fixed by a seed) w.r.t. the images."""
    x = images[:2, :, :8, :8].clone().requires_grad_(True)

    def augment(t):
        torch.manual_seed(1)
        return diff_augment(t, policy)

    assert torch.autograd.gradcheck(augment, (x,), fast_mode=True)


def test_gradient_flows_to_every_kept_pixel(images):
    x = images.float().requires_grad_(True)
    torch.manual_seed(0)
    out = diff_augment(x, "translation,cutout")
    out.sum().backward()
    # Each output pixel copies at most one input pixel, so the gradient is 1 on kept pixels and 0 elsewhere.
    assert set(x.grad.unique().tolist()) == {0.0, 1.0}
    assert x.grad.sum() == (out != 0).sum()


def test_policy_parsing(images):
    assert diff_augment(images, "") is images
    assert list(AUGMENTATIONS) == ["color", "translation", "cutout"]
    torch.manual_seed(0)
    expected = cutout(translation(images))
    torch.manual_seed(0)
    assert torch.equal(diff_augment(images, " translation, cutout "), expected)
    with pytest.raises(ValueError, match=r"unknown DiffAugment policy 'flip'; accepted: color, translation, cutout"):
        diff_augment(images, "translation,flip")


def test_dtype_and_shape_are_kept(images):
    x = images.float()[:4]
    out = diff_augment(x, "color,translation,cutout")
    assert out.dtype == torch.float32 and out.shape == x.shape
