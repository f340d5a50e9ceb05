"""Markers that skip themselves: `gpu` without CUDA, `data` without its download's root variable
(``pytest.mark.data``: LERF_OVS_ROOT; ``pytest.mark.data("SCANNET_ROOT")`` names another)."""
import os

# before torch loads, as the entry points do (stages/__init__.py): waiting OpenMP threads sleep, so the
# tests do not starve a job that shares the machine (or each other's subprocesses)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        mark = item.get_closest_marker("data")
        if mark is not None:
            env = mark.args[0] if mark.args else "LERF_OVS_ROOT"
            if not os.environ.get(env):
                item.add_marker(pytest.mark.skip(reason=f"needs the real download: set {env}"))
