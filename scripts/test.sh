#!/usr/bin/env bash
# Run the whole test suite as CI does: once with the C evaluator required (a broken build
# cannot pass on the fallback), once more on the pure-Python evaluator for the evaluation and
# client tests, then the tests of the C code against an ASan+UBSan build of the extension.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PYTHONDONTWRITEBYTECODE=1
status=0
echo "== pytest (C evaluator required)"
SHMFLAGS_REQUIRE_NATIVE=1 .venv/bin/python -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ "$status" = 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
[ "$status" = 0 ] || exit "$status"
echo "== pytest (pure-Python evaluator)"
SHMFLAGS_EVALUATOR=python .venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not c_only" \
  tests/test_corpus.py tests/unit "$@" || status=$?
if [ "$status" = 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
[ "$status" = 0 ] || exit "$status"
echo "== C extension under AddressSanitizer + UndefinedBehaviorSanitizer (tests of C code)"
SHMFLAGS_DIFF_EXAMPLES_NATIVE=10000 sh scripts/build_sanitized.sh || status=$?
exit "$status"
