#!/bin/sh
# Build shmflags._native with AddressSanitizer + UndefinedBehaviorSanitizer into a private
# directory (the in-place build others use is left alone) and run the native tests under it.
#
#   scripts/build_sanitized.sh [pytest args...]     default: every test of C code (evaluator,
#   fast path, event counting, record sets, snapshot reader and builder) + the C-vs-Python
#   differential
#
# Python itself is not instrumented, so libasan is LD_PRELOADed and leak detection is off
# (the interpreter keeps memory until exit on purpose). Any ASan/UBSan report fails the run.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${SHMFLAGS_SAN_DIR:-$(mktemp -d /tmp/shmflags-san.XXXXXX)}
CC=${CC:-gcc}

cd "$ROOT"
rm -rf "$OUT/pkg" "$OUT/build"
mkdir -p "$OUT/pkg"
SHMFLAGS_SANITIZE=1 SHMFLAGS_REQUIRE_NATIVE=1 "$PY" setup.py -q build_ext \
    --build-lib "$OUT/build/lib" --build-temp "$OUT/build/tmp" >"$OUT/build.log" 2>&1 || {
    cat "$OUT/build.log"; exit 1; }
# A private copy of the package with the sanitized extension in it.
cp -r shmflags "$OUT/pkg/shmflags"
find "$OUT/pkg/shmflags" -name '_native*.so' -delete
cp "$OUT"/build/lib/shmflags/_native*.so "$OUT/pkg/shmflags/"

LIBASAN=$($CC -print-file-name=libasan.so)
LIBUBSAN=$($CC -print-file-name=libubsan.so)
[ $# -gt 0 ] || set -- tests/unit/test_native.py tests/unit/test_parity.py \
    tests/unit/test_native_fuzz.py tests/unit/test_native_fast.py \
    tests/unit/test_events_recorder_native.py tests/unit/test_events_fast_path.py \
    tests/unit/test_events_pack.py \
    tests/unit/test_record_sets.py tests/unit/test_snapshot_reader.py \
    tests/unit/test_snapshot_builder.py \
    tests/differential/test_native_vs_python.py
export PYTHONPATH="$OUT/pkg"
export LD_PRELOAD="$LIBASAN $LIBUBSAN"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export SHMFLAGS_REQUIRE_NATIVE=1
export SHMFLAGS_DIFF_EXAMPLES_NATIVE=${SHMFLAGS_DIFF_EXAMPLES_NATIVE:-20000}
(cd / && "$PY" -c "
import os, shmflags._native as n
assert n.__file__.startswith(os.environ['PYTHONPATH']), n.__file__
print('sanitized extension:', n.__file__)")
"$(dirname "$PY")/pytest" -q -p no:cacheprovider "$@"
echo "sanitized run passed ($OUT)"
