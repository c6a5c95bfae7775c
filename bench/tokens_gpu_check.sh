#!/bin/sh
# The GPU counter's device checks (issue 19), in one run, on a machine with a GPU, the `gpu`
# extra and g++: the device tests (exactness, long pieces on the device, the caches), then
# the profile on mixed and on real text, the throughput against tiktoken, and the bulk
# command per backend. A few minutes on an H100/H200. Paste the output into the issue.
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD"
"$PY" -m pytest -q -p no:cacheprovider -s tests/tokens/test_gpu_nvrtc.py \
    tests/tokens/test_gpu_device.py
"$PY" bench/tokens.py --profile --sizes 64,1024,2048,16384 --rounds 3
"$PY" bench/tokens.py --profile --text-dir gateway --sizes 1024,8192 --rounds 3
"$PY" bench/tokens.py --sizes 2048,16384 --no-host --rounds 3
"$PY" bench/tokens.py --bulk 11 --rounds 3
"$PY" bench/tokens.py --bulk 128 --rounds 1
