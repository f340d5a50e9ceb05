"""Markers that skip themselves: `gpu` without CUDA, `data` without LERF_OVS_ROOT."""
import os

# before torch loads, as the entry points do (stages/__init__.py): waiting OpenMP threads sleep, so the
# tests do not starve a job that shares the machine (or each other's subprocesses)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    no_data = pytest.mark.skip(reason="needs the LERF-OVS download: set LERF_OVS_ROOT")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "data" in item.keywords and not os.environ.get("LERF_OVS_ROOT"):
            item.add_marker(no_data)
