"""Tone mapping and colour encodings against hand-computed values."""

import torch

from omnivox.render.tonemap import aces_filmic, gamma_decode, gamma_encode, srgb_decode, srgb_encode, tonemap, to_uint8


def test_aces_hand_values():
    x = torch.tensor([0.0, 0.18, 1.0, 1e6, -3.0], dtype=torch.float64)
    # 0.18: 0.18 (2.51*0.18 + 0.03) / (0.18 (2.43*0.18 + 0.59) + 0.14) = 0.086724 / 0.324932
    expected = torch.tensor([0.0, 0.086724 / 0.324932, 2.54 / 3.16, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(aces_filmic(x), expected, rtol=1e-6, atol=1e-9)


def test_srgb_hand_values_and_round_trip():
    x = torch.tensor([0.0, 0.002, 0.0031308, 0.5, 1.0], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.02584, 0.04045, 1.055 * 0.5 ** (1 / 2.4) - 0.055, 1.0], dtype=torch.float64)
    torch.testing.assert_close(srgb_encode(x), expected, rtol=1e-4, atol=1e-5)
    assert abs(float(srgb_decode(torch.tensor(0.5, dtype=torch.float64))) - 0.21404114) < 1e-7
    y = torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(srgb_decode(srgb_encode(y)), y, rtol=1e-10, atol=1e-12)


def test_reference_gamma_curves_differ_from_srgb_in_the_darks():
    x = torch.tensor([0.02], dtype=torch.float64)
    assert abs(float(gamma_encode(x)) - 0.02 ** (1 / 2.2)) < 1e-12
    assert abs(float(gamma_decode(gamma_encode(x))) - 0.02) < 1e-12
    assert float(gamma_encode(x) - srgb_encode(x)) > 0.015  # the documented quirk: 0.169 vs 0.152


def test_tonemap_and_uint8():
    radiance = torch.tensor([[0.0, 1.0, 100.0]])
    out = tonemap(radiance)
    assert out[0, 0] == 0 and abs(float(out[0, 1]) - float(srgb_encode(torch.tensor(2.54 / 3.16)))) < 1e-6
    assert float(out[0, 2]) > 0.99
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0, 2.0])).tolist() == [0, 128, 255, 255]
