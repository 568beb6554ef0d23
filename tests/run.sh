#!/usr/bin/env bash
# The project's one test command (the README's second set-up step; .ci/run runs exactly this).
# Installs what the tests need (the oracles: gpt-oss's reference model, torch CPU, transformers,
# bpe-openai's offline vocabulary, safetensors, pytest), then runs the C++ tests (ctest, in the
# build tree that `pip install .` left in build/) and the Python tests (pytest).
# GPU tests skip cleanly when no GPU is present. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

"$PY" -c "import pytest, safetensors, bpe_openai" 2>/dev/null || pip_install "pytest>=7" "safetensors>=0.4" "bpe-openai>=0.1.4"
# CPU torch for the reference model (2.13.0 is the CPU build these machines carry; any torch >= 2.4 works).
"$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0" || pip_install torch --index-url https://download.pytorch.org/whl/cpu
# gpt-oss declares Python >= 3.12 and pulls serving extras; its torch reference needs neither.
"$PY" -c "import gpt_oss.torch.model" 2>/dev/null || pip_install --no-deps --ignore-requires-python "gpt-oss==0.0.9"
# Hugging Face transformers' GptOss: the second logits oracle, and the bench's --compare-hf peer.
"$PY" -c "import transformers" 2>/dev/null || pip_install "transformers==5.24.0"

tag=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
build=$(ls -d build/${tag}-* 2>/dev/null | head -n 1 || true)
if [ -z "$build" ] || [ ! -f "$build/CTestTestfile.cmake" ]; then
  echo "tests/run.sh: no build tree for $tag under build/; run 'pip install .' first" >&2
  exit 1
fi
echo "== ctest ($build)"
ctest --test-dir "$build" --output-on-failure
echo "== pytest"
"$PY" -m pytest -q -rfE "$@"
