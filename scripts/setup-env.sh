#!/usr/bin/env bash
# Prepare a machine for shmflags: system packages, a virtualenv in .venv, the package with its
# test extras, and the C extension built in place. Idempotent; used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install: ${need_apt[*]}" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "setup: pip install -e .[test]"
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v -i "warning: location" || true
echo "setup: building the C extension"
.venv/bin/python setup.py -q build_ext --inplace 2>&1 | grep -v -E "^(running|copying)" || true
.venv/bin/python -c "import shmflags, shmflags.backend as b; print('setup: evaluator backend:', b.evaluator_backend())" || true
