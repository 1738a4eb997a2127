"""GPU discovery: no NVML or no GPU is an answer, not an error."""

from __future__ import annotations

import sys

import pytest

from workers import gpu


def test_no_driver_means_no_gpus() -> None:
    # This machine has the NVML bindings but no NVIDIA driver.
    assert gpu.discover() == []
    assert gpu.find(0) is None
    assert gpu.find(None) is None


def test_no_bindings_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert gpu.discover() == []
