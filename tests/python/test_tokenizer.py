"""The o200k_harmony tokenizer against tiktoken's own o200k_harmony encoding (the oracle), offline.

tiktoken's encoding is built from its own constructor, fed the official vocabulary file (from the
bpe-openai package) through tiktoken's cache directory, so nothing here is our code checked against
itself.
"""

import gzip
import hashlib
import importlib.resources
import shutil

import pytest
import tiktoken

from gpt_oss_c import get_tokenizer
from gpt_oss_c.tokenizer import O200K_URL, VOCAB_ENV, VocabError, resolve_vocab

VOCAB_GZ = importlib.resources.files("bpe_openai") / "data" / "o200k_base.tiktoken.gz"

CORPUS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "日本語のテキストと中文文本，还有한국어 문장도 있습니다。",
    "مرحبا بالعالم، هذه جملة عربية مع أرقام ١٢٣ و 456.",
    "Emoji: 🙂🎉👩‍👩‍👧‍👦 🇫🇷 and symbols ∑∫√∞ ≠ ≤ ≥",
    "def f(x):\n\tif x > 0:\n\t\treturn x ** 2  # square\n    return -x\n",
    "   leading spaces, trailing spaces   \n\n\n\t\t mixed\r\nwhitespace runs          end",
    "<|start|>user<|message|>special-token text<|end|> <|return|> <|constrain|>json <|endoftext|>",
    "I'm sure they've said you'd CAN'T won't Shouldn't",
    "1234567890 3.14159 1e-10 0x1F 1,000,000",
    "naïve café résumé Ångström Zürich",
    "",
    " ",
    "a" * 1000,
]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    key = hashlib.sha1(O200K_URL.encode()).hexdigest()
    (cache / key).write_bytes(gzip.decompress(VOCAB_GZ.read_bytes()))
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    enc = tiktoken.get_encoding("o200k_harmony")
    mp.undo()
    return enc


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_tiktoken_and_round_trips(tok, oracle, text):
    ids = tok.encode(text)
    assert ids == oracle.encode(text, disallowed_special=())  # special-token text is plain text
    assert tok.decode(ids) == text
    assert all(i < 199998 for i in ids)


def test_special_tokens_only_when_allowed(tok, oracle):
    text = "<|start|>assistant<|channel|>final<|message|>hi<|return|>"
    assert tok.encode(text, allowed_special="all") == oracle.encode(text, allowed_special="all")
    assert tok.encode(text, allowed_special="all")[0] == 200006
    assert tok.encode(text, allowed_special={"<|start|>"})[0] == 200006
    assert 200008 not in tok.encode(text, allowed_special={"<|start|>"})
    assert tok.encode("<|start|>") == oracle.encode("<|start|>", disallowed_special=())
    assert 200006 not in tok.encode("<|start|>")


def test_special_table_matches(tok, oracle):
    assert tok.encoding._special_tokens == oracle._special_tokens
    assert tok.encoding.n_vocab == oracle.n_vocab == 201088
    for i in (199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012, 200018, 201087):
        assert tok.decode([i]) == oracle.decode([i])


def test_decode_is_utf8_safe_and_checks_range(tok):
    ids = tok.encode("🙂")
    assert tok.decode_bytes(ids) == "🙂".encode()
    if len(ids) > 1:  # a split character decodes to U+FFFD, never raises
        assert "\ufffd" in tok.decode(ids[:1])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([201088])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_vocab_resolution_order(tmp_path, monkeypatch):
    gz = tmp_path / "v.tiktoken.gz"
    shutil.copyfile(str(VOCAB_GZ), gz)
    assert resolve_vocab(vocab_file=gz)[0] == gz  # explicit file first
    monkeypatch.setenv(VOCAB_ENV, str(gz))
    assert resolve_vocab()[0] == gz  # then the environment variable
    monkeypatch.delenv(VOCAB_ENV)
    ckpt = tmp_path / "ckpt"
    (ckpt / "original").mkdir(parents=True)
    plain = ckpt / "original" / "o200k_base.tiktoken"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    assert resolve_vocab(checkpoint_dir=ckpt)[0] == plain  # then the checkpoint directory


def test_vocab_errors(tmp_path, monkeypatch):
    with pytest.raises(VocabError, match="does not exist"):
        resolve_vocab(vocab_file=tmp_path / "missing.tiktoken")
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"aGVsbG8= 0\n")
    with pytest.raises(VocabError, match="sha256"):
        resolve_vocab(vocab_file=bad)
    monkeypatch.setenv(VOCAB_ENV, str(tmp_path / "nope"))
    with pytest.raises(VocabError, match=VOCAB_ENV):
        resolve_vocab()
