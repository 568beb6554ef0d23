"""The gpt-oss-c command line, run as a user would (subprocess)."""

import json
import os
import subprocess
import sys

import pytest


def run(args, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "gpt_oss_c.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input, timeout=600)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny"
    r = run(["make-test-model", str(path), "--size", "tiny", "--layout", "original", "--seed", "4"])
    assert r.returncode == 0, r.stderr
    assert "random weights" in r.stdout
    return path


def test_generate_streams_and_reports_speed(ckpt):
    r = run(["generate", "--model", str(ckpt), "--device", "cpu", "Once upon a time", "--max-new-tokens", "6",
             "--temperature", "0"])
    assert r.returncode == 0, r.stderr
    assert "tok/s" in r.stderr and "6 tokens" in r.stderr


def test_generate_without_model_uses_the_demo(tmp_path):
    r = run(["generate", "--device", "cpu", "hi", "--max-new-tokens", "3"], env={"XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stderr
    assert (tmp_path / "gpt_oss_c" / "demo-tiny-hf" / "config.json").is_file()


def test_generate_bad_value_is_a_clean_error(ckpt):
    r = run(["generate", "--model", str(ckpt), "--device", "cpu", "hi", "--top-p", "0"])
    assert r.returncode == 2
    assert "top_p" in r.stderr and "Traceback" not in r.stderr


def test_info(ckpt):
    r = run(["info", "--model", str(ckpt), "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["build"]["version"] and d["model"]["device"] == "cpu"
    assert d["model"]["layout"] == "original"
