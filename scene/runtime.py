"""Where a run computes and how it is seeded: ``run.device`` and ``run.seed`` / ``run.deterministic``."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import StageError

DEVICES = "auto | cpu | cuda | cuda:N"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise StageError(f"run.device={name!r} is not a device: use {DEVICES}") from None
    if dev.type not in ("cpu", "cuda"):
        raise StageError(f"run.device={name!r} is not supported: use {DEVICES}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"run.device={name!r} but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed every RNG; with ``deterministic``, ask torch for its deterministic kernels (warn-only: an
    op without one warns instead of failing). The C++ CPU rasterizer is deterministic by design."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reproducibility (torch docs)
        torch.use_deterministic_algorithms(True, warn_only=True)
