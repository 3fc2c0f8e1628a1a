"""Shared fixtures: the `device` fixture runs a test once per device.

"cuda" cases carry `pytest.mark.cuda` and are skipped when `mg.cuda_available()`
is False, so the same files run unchanged on a CPU-only machine and on the GPU
machine (where `pytest -m cuda` selects just the GPU cases).
"""
import zlib

import numpy as np
import pytest

import minigrad as mg

DEVICES = ["cpu", "cuda"]


def pytest_configure(config):
    # registered here too, so the marker is known even when pyproject's list is absent
    config.addinivalue_line("markers", "cuda: needs a GPU and the CUDA extras "
                                       "(skipped when CUDA is unavailable)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    cuda_ok = None
    for item in items:
        if item.get_closest_marker("cuda") is None:
            continue
        if cuda_ok is None:
            cuda_ok = mg.cuda_available()
        if not cuda_ok:
            item.add_marker(pytest.mark.skip(reason="CUDA is unavailable "
                                                    "(mg.cuda_available() is False)"))


@pytest.fixture(params=[pytest.param(d, marks=[pytest.mark.cuda] if d == "cuda" else [])
                        for d in DEVICES])
def device(request):
    """"cpu" or "cuda" (the latter skipped without a GPU)."""
    return request.param


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name: fresh values per test, yet
    reproducible when a failure is re-run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _cpu_default_unless_device_test(request, monkeypatch):
    """Tests that take no `device` and are not marked cuda are CPU tests (gradcheck in
    float64, NumPy references): pin the default device to "cpu" so they mean the same
    on the GPU machine, where the default would otherwise be "cuda"."""
    if "device" not in request.fixturenames and request.node.get_closest_marker("cuda") is None:
        monkeypatch.setenv("MINIGRAD_DEVICE", "cpu")


@pytest.fixture
def poisoned_device(device):
    """Like `device`, and on CUDA every new buffer is NaN/-1-filled before a kernel
    writes it, so an element a kernel forgets to write fails the comparison."""
    if device != "cuda":
        yield device
        return
    from minigrad.backend.cuda import backend as bm
    bm.POISON = True
    try:
        yield device
    finally:
        bm.POISON = False
