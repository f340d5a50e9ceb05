"""Markers that skip themselves: `gpu` without CUDA, `data` without LERF_OVS_ROOT."""
import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    no_data = pytest.mark.skip(reason="needs the LERF-OVS download: set LERF_OVS_ROOT")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "data" in item.keywords and not os.environ.get("LERF_OVS_ROOT"):
            item.add_marker(no_data)
