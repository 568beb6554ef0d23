"""Shared pytest fixtures: the device under test and the reference module on sys.path."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/reference.py


def _core():
    from gpt_oss_c import _core as core

    return core


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> str:
    """Every op test runs on the CPU backend and, where a GPU is visible, on the CUDA backend."""
    if request.param == "cuda" and not _core().cuda_available():
        pytest.skip("no CUDA backend or GPU (gpt_oss_c._core.cuda_available() is False)")
    return request.param


@pytest.fixture
def act(device) -> str:
    """The backend's activation dtype, "F32" or "BF16": it sets the tolerances."""
    return _core().ops.backend_info(device)["act_type"]
