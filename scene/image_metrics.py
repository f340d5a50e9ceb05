"""Image metrics used while training and evaluating 3DGS: L1, PSNR and SSIM (3DGS's definition)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_WINDOW_CACHE: dict = {}


def _window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    key = (size, sigma, channels, str(device), dtype)
    if key not in _WINDOW_CACHE:
        x = torch.arange(size, dtype=torch.float64) - size // 2
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()
        w = (g[:, None] * g[None, :]).to(device=device, dtype=dtype)
        _WINDOW_CACHE[key] = w.expand(channels, 1, size, size).contiguous()
    return _WINDOW_CACHE[key]


def ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two images [H,W,C] (channels last) in [0,1].

    3DGS ``utils/loss_utils.py``: 11x11 Gaussian window, sigma 1.5, zero padding of 5,
    C1 = 0.01^2, C2 = 0.03^2, averaged over all pixels and channels."""
    a = img1.permute(2, 0, 1)[None]
    b = img2.permute(2, 0, 1)[None]
    c = a.shape[1]
    w = _window(window_size, sigma, c, a.device, a.dtype)
    pad = window_size // 2
    mu1 = F.conv2d(a, w, padding=pad, groups=c)
    mu2 = F.conv2d(b, w, padding=pad, groups=c)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = F.conv2d(a * a, w, padding=pad, groups=c) - mu1_sq
    s2 = F.conv2d(b * b, w, padding=pad, groups=c) - mu2_sq
    s12 = F.conv2d(a * b, w, padding=pad, groups=c) - mu12
    C1, C2 = 0.01**2, 0.03**2
    m = ((2 * mu12 + C1) * (2 * s12 + C2)) / ((mu1_sq + mu2_sq + C1) * (s1 + s2 + C2))
    return m.mean()


def psnr(img1: torch.Tensor, img2: torch.Tensor) -> float:
    """PSNR in dB of two images in [0,1] (any shape); inf for identical images."""
    mse = torch.mean((img1.double() - img2.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)
