"""Shared by the engine-level tests: the devices to run on (CUDA skipped cleanly without a GPU)."""

import pytest

from gpt_oss_c import _core

HAS_CUDA = _core.cuda_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")])]
