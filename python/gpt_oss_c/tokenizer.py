"""The o200k_harmony tokenizer, built on the official ``tiktoken``.

The BPE ranks come from OpenAI's ``o200k_base.tiktoken`` file (sha256 ``446a9538…``). It is found in
this order, the first hit winning:

1. an explicit ``vocab_file`` argument;
2. the ``GPT_OSS_C_VOCAB`` environment variable;
3. the checkpoint directory (``o200k_base.tiktoken`` or ``.tiktoken.gz``, also under ``original/``);
4. tiktoken's own cache (``TIKTOKEN_CACHE_DIR``, ``DATA_GYM_CACHE_DIR`` or ``<tmp>/data-gym-cache``);
5. the ``bpe-openai`` package, which ships the same file (used by the tests, offline);
6. tiktoken's normal download into its cache.

Every candidate is checked against the official hash. The harmony library (openai-harmony, used by
chat) reads the same file through :func:`harmony_vocab_dir`, so text and chat share one resolver.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Collection, Iterable, Literal

import tiktoken

VOCAB_ENV = "GPT_OSS_C_VOCAB"
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
VOCAB_NAMES = ("o200k_base.tiktoken", "o200k_base.tiktoken.gz")

# The o200k_base pre-tokenizer; harmony uses the identical string (GPT_OSS_FORMAT.md §5).
O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# Named special tokens of o200k_harmony (the table of tiktoken's own o200k_harmony constructor).
STARTOFTEXT, ENDOFTEXT = 199998, 199999
RETURN, CONSTRAIN, CHANNEL, START, END, MESSAGE, CALL = 200002, 200003, 200005, 200006, 200007, 200008, 200012
ENDOFPROMPT = 200018
N_VOCAB = 201088


def _special_tokens() -> dict[str, int]:
    named = {
        "<|endoftext|>": ENDOFTEXT,
        "<|endofprompt|>": ENDOFPROMPT,  # inherited from o200k_base
        "<|startoftext|>": STARTOFTEXT,
        "<|reserved_200000|>": 200000,
        "<|reserved_200001|>": 200001,
        "<|return|>": RETURN,
        "<|constrain|>": CONSTRAIN,
        "<|reserved_200004|>": 200004,
        "<|channel|>": CHANNEL,
        "<|start|>": START,
        "<|end|>": END,
        "<|message|>": MESSAGE,
        "<|reserved_200009|>": 200009,
        "<|reserved_200010|>": 200010,
        "<|reserved_200011|>": 200011,
        "<|call|>": CALL,
    }
    return named | {f"<|reserved_{i}|>": i for i in range(200013, N_VOCAB)}


class VocabError(FileNotFoundError):
    """The o200k vocabulary file could not be found, or a candidate failed its hash check."""


def _read_vocab_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def _checked(path: Path) -> bytes:
    data = _read_vocab_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_SHA256:
        raise VocabError(f"vocabulary file {path} has sha256 {digest}, expected {O200K_SHA256} (o200k_base)")
    return data


def _tiktoken_cache_dir() -> Path:
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return Path(os.environ["TIKTOKEN_CACHE_DIR"])
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return Path(os.environ["DATA_GYM_CACHE_DIR"])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _candidates(vocab_file: str | os.PathLike | None, checkpoint_dir: str | os.PathLike | None) -> Iterable[Path]:
    if vocab_file is not None:
        p = Path(vocab_file)
        if not p.is_file():
            raise VocabError(f"vocabulary file {p} does not exist")
        yield p
        return
    env = os.environ.get(VOCAB_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise VocabError(f"${VOCAB_ENV} points to {p}, which does not exist")
        yield p
        return
    if checkpoint_dir is not None:
        for sub in ("", "original"):
            for name in VOCAB_NAMES:
                p = Path(checkpoint_dir) / sub / name
                if p.is_file():
                    yield p
    cached = _tiktoken_cache_dir() / hashlib.sha1(O200K_URL.encode()).hexdigest()
    if cached.is_file():
        yield cached
    try:
        import importlib.resources

        p = Path(str(importlib.resources.files("bpe_openai") / "data" / "o200k_base.tiktoken.gz"))
        if p.is_file():
            yield p
    except (ImportError, ModuleNotFoundError, TypeError):
        pass


def resolve_vocab(
    vocab_file: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None
) -> tuple[Path | None, bytes]:
    """Finds the o200k_base vocabulary (see the module docstring) and returns (path, contents).

    The path is None when the file came from tiktoken's download. Raises VocabError when an explicit
    file is missing or fails its hash, or when nothing is found and the download fails."""
    for p in _candidates(vocab_file, checkpoint_dir):
        return p, _checked(p)
    try:
        from tiktoken.load import read_file_cached

        return None, read_file_cached(O200K_URL, O200K_SHA256)
    except Exception as e:  # network errors come in many types
        raise VocabError(
            "cannot find the o200k_base vocabulary: pass vocab_file=, set $GPT_OSS_C_VOCAB, put "
            "o200k_base.tiktoken in the checkpoint directory, or `pip install bpe-openai` "
            f"(download failed: {e})"
        ) from e


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


class Tokenizer:
    """o200k_harmony: o200k_base BPE plus the harmony special tokens, ids 0..201087.

    Special-token strings inside text are encoded as ordinary text unless allowed explicitly."""

    def __init__(self, vocab_bytes: bytes, vocab_path: Path | None = None):
        self.vocab_path = vocab_path
        self._vocab_bytes = vocab_bytes
        self.encoding = tiktoken.Encoding(
            name="o200k_harmony",
            pat_str=O200K_PAT_STR,
            mergeable_ranks=_parse_ranks(vocab_bytes),
            special_tokens=_special_tokens(),
        )
        self.n_vocab = N_VOCAB
        self.stop_tokens_for_assistant = (RETURN, CALL)

    def encode(self, text: str, allowed_special: Literal["all"] | Collection[str] = ()) -> list[int]:
        """Encodes text. Special tokens are recognised only if named in allowed_special (or "all")."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, got {type(text).__name__}")
        allowed = allowed_special if allowed_special == "all" else set(allowed_special)
        return self.encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes ids to text; invalid UTF-8 (a partial multi-byte character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < N_VOCAB:
                raise ValueError(f"token id {i} is out of range [0, {N_VOCAB})")
        return self.encoding.decode_bytes(ids)

    def is_special(self, token_id: int) -> bool:
        return token_id >= STARTOFTEXT

    def harmony_vocab_dir(self) -> Path:
        """A directory holding ``o200k_base.tiktoken`` for openai-harmony's TIKTOKEN_ENCODINGS_BASE."""
        return harmony_vocab_dir(self._vocab_bytes)


def harmony_vocab_dir(vocab_bytes: bytes) -> Path:
    """Writes (once) the verified vocabulary where openai-harmony can read it, and returns the dir."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt_oss_c" / "vocab"
    target = base / "o200k_base.tiktoken"
    if not target.is_file() or target.stat().st_size != len(vocab_bytes):
        base.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(vocab_bytes)
        os.replace(tmp, target)
    return base


_TOKENIZERS: dict[str, Tokenizer] = {}


def get_tokenizer(
    vocab_file: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None
) -> Tokenizer:
    """Returns the o200k_harmony tokenizer (cached: the vocabulary is parsed once per process)."""
    path, data = resolve_vocab(vocab_file, checkpoint_dir)
    key = str(path)
    tok = _TOKENIZERS.get(key)
    if tok is None:
        tok = Tokenizer(data, path)
        _TOKENIZERS[key] = tok
    return tok
