"""Exceptions raised by gpt_oss_c's Python layer.

Each one subclasses the builtin a caller would naturally catch, so `except ValueError` keeps
working, while `except CheckpointError` lets a caller single out our own diagnoses. A missing
directory or config.json is a plain FileNotFoundError (no new class is needed for that).
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, truncated or does not match the config.

    The message names the file and, where there is one, the tensor, and says what was expected
    and what was found. `file` and `tensor` carry the same facts for programs (None if unknown).
    """

    def __init__(self, message: str, *, file: str | None = None, tensor: str | None = None):
        super().__init__(message)
        self.file = file
        self.tensor = tensor


class UnsupportedConfigError(NotImplementedError, ValueError):
    """A config (or checkpoint form) that gpt_oss_c cannot run.

    Raised for a config.json with missing or mistyped required keys, a model_type other than
    gpt_oss, shapes the kernels do not support (head_dim != 64, sizes not multiples of 32, ...),
    and for dequantised checkpoints (the engine needs the MXFP4 expert weights). Catchable as
    NotImplementedError or as ValueError.
    """
