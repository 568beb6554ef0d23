"""gpt_oss_c: a compiled inference engine for OpenAI's gpt-oss models.

    import gpt_oss_c
    model = gpt_oss_c.load("/path/to/gpt-oss-20b")          # HF or original/ layout, CPU or CUDA
    print(model.generate("The capital of France is", max_new_tokens=16, temperature=0).text)
"""

from .generate import GenerationChunk, GenerationResult, SamplingParams
from .model import Model, load
from .tokenizer import Tokenizer, get_tokenizer

__version__ = "0.1.0"

__all__ = [
    "load", "Model", "GenerationResult", "GenerationChunk", "SamplingParams", "get_tokenizer", "Tokenizer",
    "render_chat", "build_info", "__version__",
]


def build_info() -> dict:
    """Facts about this build: version, compiler, CUDA on/off and archs, CPU SIMD level, threads."""
    from . import _core  # imported lazily so the pure-Python modules work without the extension

    return dict(_core.build_info())


def render_chat(messages, **kwargs) -> list[int]:
    """The exact harmony prompt tokens for a conversation; see gpt_oss_c.chat.render_chat."""
    from .chat import render_chat as _render

    return _render(messages, **kwargs)
