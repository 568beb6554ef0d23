"""gpt_oss_c: a compiled inference engine for OpenAI's gpt-oss models."""

__version__ = "0.1.0"


def build_info() -> dict:
    """Facts about this build: version, compiler, CUDA on/off and archs, CPU SIMD level, threads."""
    from . import _core  # imported lazily so pure-Python submodules work without the extension

    return dict(_core.build_info())
