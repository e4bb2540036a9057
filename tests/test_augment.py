"""Behavioural tests for the batched kornia augmentation policies."""

from __future__ import annotations

import pytest
import torch

from amcl.data.augment import AUGMENTATION_CODES, TwoViews, ViewAugmentation, blur_kernel_size, parse_policy

S = 32


def rand_batch(b: int = 8, size: int = S, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g)


def colour_set(img: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(v) for v in img.reshape(3, -1).T.tolist()}


def test_parse_policy_canonical():
    assert parse_policy("default") == "acde"
    assert parse_policy("ca") == "ac"
    assert parse_policy("edcba") == "abcde"
    assert parse_policy("color") == "color"


@pytest.mark.parametrize("bad", ["x", "aa", "", "abz"])
def test_parse_policy_errors_list_valid_codes(bad):
    with pytest.raises(ValueError) as info:
        parse_policy(bad)
    msg = str(info.value)
    assert "\n" not in msg
    assert all(f"{code}=" in msg for code in AUGMENTATION_CODES)
    assert "default" in msg and "color" in msg


def test_flip_mirrors_exactly():
    x = rand_batch()  # random image: asymmetric with probability 1
    out = ViewAugmentation("e", S, probabilities={"e": 1.0})(x)
    torch.testing.assert_close(out, torch.flip(x, dims=[-1]), rtol=0, atol=0)


def test_flip_keeps_colours():
    x = rand_batch(4)
    out = ViewAugmentation("e", S)(x)
    for i in range(len(x)):
        assert colour_set(out[i]) == colour_set(x[i])


def test_crop_keeps_constant_colour():
    x = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(4, 3, S, S).contiguous()
    out = ViewAugmentation("a", S)(x)
    torch.testing.assert_close(out, x)


def test_grayscale_equal_channels():
    out = ViewAugmentation("c", S, probabilities={"c": 1.0})(rand_batch())
    torch.testing.assert_close(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 1], out[:, 2])


def test_crop_respects_scale_and_position():
    size, b = 64, 256
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, size)
    x_ramp, y_ramp = ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size)
    x = torch.stack([x_ramp, y_ramp, torch.zeros(size, size)])
    x = x.expand(b, -1, -1, -1).contiguous()
    aug = ViewAugmentation("a", size)
    out = aug(x)
    assert out.shape == (b, 3, size, size)
    src = aug.ops["a"]._params["src"]  # [B, 4, 2] corners (x, y), inclusive pixel coordinates
    w = src[:, 2, 0] - src[:, 0, 0] + 1
    h = src[:, 2, 1] - src[:, 0, 1] + 1
    frac = w * h / size**2
    tol = 2.0 / size  # box corners are rounded to whole pixels
    assert frac.min() >= 0.08 - tol and frac.max() <= 1.0
    assert ((w / h) > 3 / 4 - 0.1).all() and ((w / h) < 4 / 3 + 0.1).all()
    # pixel values encode position, so the output edges reveal the source box
    torch.testing.assert_close(out[:, 0, :, 0].mean(1), src[:, 0, 0] / (size - 1), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, 0, :, -1].mean(1), src[:, 2, 0] / (size - 1), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, 1, 0, :].mean(1), src[:, 0, 1] / (size - 1), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, 1, -1, :].mean(1), src[:, 2, 1] / (size - 1), atol=1e-3, rtol=0)


def test_jitter_strength_zero_is_identity():
    x = rand_batch()
    out = ViewAugmentation("d", S, color_strength=0.0, probabilities={"d": 1.0})(x)
    torch.testing.assert_close(out, x)


def test_jitter_changes_image():
    torch.manual_seed(0)
    x = rand_batch(16)
    out = ViewAugmentation("d", S, color_strength=0.5, probabilities={"d": 1.0})(x)
    assert ((out - x).abs().amax(dim=(1, 2, 3)) > 1e-3).all()


def test_color_policy_forces_jitter():
    aug = ViewAugmentation("color", S, color_strength=1.0)
    assert aug.policy == "color" and list(aug.ops) == ["a", "d"] and aug.ops["d"].p == 1.0


def test_blur_reduces_checkerboard_variance():
    torch.manual_seed(0)
    idx = torch.arange(S)
    board = ((idx.view(-1, 1) + idx.view(1, -1)) % 2).float()
    x = board.expand(16, 3, S, S).contiguous()
    out = ViewAugmentation("b", S, probabilities={"b": 1.0})(x)
    var_in, var_out = x.var(dim=(1, 2, 3)), out.var(dim=(1, 2, 3))
    assert (var_out <= var_in + 1e-6).all()
    assert var_out.mean() < 0.8 * var_in.mean()


def test_blur_kernel_size():
    assert blur_kernel_size(32) == 3 and blur_kernel_size(224) == 23 and blur_kernel_size(10) == 3
    assert all(blur_kernel_size(s) % 2 == 1 for s in range(8, 300))


def test_default_equals_acde():
    x = rand_batch()
    a, b = ViewAugmentation("default", S), ViewAugmentation("acde", S)
    assert a.policy == b.policy == "acde"
    torch.manual_seed(123)
    out_a = a(x)
    torch.manual_seed(123)
    out_b = b(x)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)


def test_identity_policy_and_uint8_conversion():
    x8 = torch.randint(0, 256, (4, 3, S, S), dtype=torch.uint8)
    aug = ViewAugmentation("c", S, probabilities={"c": 0.0})
    assert len(aug.ops) == 1 and "a" not in aug.ops
    out = aug(x8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x8.float() / 255, rtol=0, atol=0)
    xf = rand_batch()
    torch.testing.assert_close(aug(xf), xf, rtol=0, atol=0)


def test_normalisation():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = rand_batch()
    out = ViewAugmentation("c", S, mean=mean, std=std, probabilities={"c": 0.0})(x)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


def test_batch_gets_per_image_crops():
    torch.manual_seed(0)
    x = rand_batch(1).expand(64, -1, -1, -1).contiguous()  # same image 64 times
    aug = ViewAugmentation("a", S)
    out = aug(x)
    assert out.shape == (64, 3, S, S)
    assert torch.unique(aug.ops["a"]._params["src"].reshape(64, -1), dim=0).shape[0] > 32
    assert torch.unique(out.reshape(64, -1), dim=0).shape[0] > 32


def test_uint8_and_float_agree():
    x8 = torch.randint(0, 256, (8, 3, S, S), dtype=torch.uint8)
    aug = ViewAugmentation("abcde", S)
    torch.manual_seed(7)
    out8 = aug(x8)
    torch.manual_seed(7)
    outf = aug(x8.float() / 255)
    torch.testing.assert_close(out8, outf, rtol=0, atol=0)


def test_grayscale_input_and_resize():
    x = torch.rand(4, 1, 48, 40)
    out = ViewAugmentation("abcde", S)(x)
    assert out.shape == (4, 3, S, S) and out.dtype == torch.float32
    ident = ViewAugmentation("c", 24, probabilities={"c": 0.0})(torch.rand(2, 1, 48, 48))
    assert ident.shape == (2, 3, 24, 24)
    torch.testing.assert_close(ident[:, 0], ident[:, 2], rtol=0, atol=0)


def test_two_views_independent():
    torch.manual_seed(0)
    x = rand_batch(8)
    v1, v2 = TwoViews(ViewAugmentation("default", S))(x)
    assert v1.shape == v2.shape == (8, 3, S, S)
    assert not torch.equal(v1, v2)
    w1, w2 = TwoViews(ViewAugmentation("e", S, probabilities={"e": 1.0}), ViewAugmentation("c", S))(x)
    torch.testing.assert_close(w1, torch.flip(x, dims=[-1]))
    assert w2.shape == x.shape
