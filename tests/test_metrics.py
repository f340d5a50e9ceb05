"""Image metrics against closed forms and an independent scipy implementation."""
import math

import numpy as np
import torch
from scipy.ndimage import correlate

from scene.image_metrics import psnr, ssim


def test_psnr_closed_form():
    a = torch.zeros(8, 8, 3, dtype=torch.float64)
    b = torch.full((8, 8, 3), 0.1, dtype=torch.float64)
    assert abs(psnr(a, b) - 20.0) < 1e-9  # mse = 0.01 -> 20 dB
    assert psnr(a, a) == math.inf


def _ssim_scipy(a: np.ndarray, b: np.ndarray) -> float:
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()
    w = np.outer(g, g)
    vals = []
    for c in range(a.shape[2]):
        f = lambda im: correlate(im, w, mode="constant", cval=0.0)  # noqa: E731 - zero padding as 3DGS
        A, B = a[..., c], b[..., c]
        mu1, mu2 = f(A), f(B)
        s1, s2, s12 = f(A * A) - mu1**2, f(B * B) - mu2**2, f(A * B) - mu1 * mu2
        C1, C2 = 0.01**2, 0.03**2
        vals.append(((2 * mu1 * mu2 + C1) * (2 * s12 + C2)) / ((mu1**2 + mu2**2 + C1) * (s1 + s2 + C2)))
    return float(np.mean(vals))


def test_ssim_matches_independent_implementation():
    rng = np.random.default_rng(0)
    a = rng.random((23, 31, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert abs(got - _ssim_scipy(a, b)) < 1e-10
    assert abs(ssim(torch.from_numpy(a), torch.from_numpy(a)).item() - 1.0) < 1e-12
    assert got < 0.99
