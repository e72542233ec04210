#!/usr/bin/env bash
# A subset of CPython's own test suite (Debian package libpython3.11-testsuite) with
# PYTHONMALLOC=malloc, so every object goes through the allocator under test. Prints
# the tests run and regrtest's verdict (timings vary, so the rest is not printed).
source "$(dirname "$0")/lib.sh"
PY=${PYTHON:-/usr/bin/python3}
need "$PY" python3
TESTDIR=$("$PY" -c 'import os, sysconfig; print(os.path.join(sysconfig.get_path("stdlib"), "test"))')
[ -f "$TESTDIR/test_dict.py" ] || skip "CPython's test suite not installed (apt package libpython3-testsuite / libpython3.11-testsuite)"
TESTS=(test_dict test_list test_set test_tuple test_unicode test_bytes test_json test_re
       test_collections test_heapq test_sort test_long test_itertools test_functools test_deque)
export PYTHONMALLOC=malloc PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
cd "$WORK"
status=0
run_prog "$PY" -m test --timeout 300 "${TESTS[@]}" >"$WORK/regrtest.log" 2>&1 || status=$?
echo "tests: ${TESTS[*]}"
grep -E '^(Tests result|All [0-9]+ tests OK)' "$WORK/regrtest.log" || true
if [ "$status" -ne 0 ]; then
    tail -n 60 "$WORK/regrtest.log" >&2
    exit "$status"
fi
