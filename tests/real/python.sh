#!/usr/bin/env bash
# python3 workload (python_workload.py): containers, strings, json, regex, big
# integers, threads and fork, once with pymalloc and once with PYTHONMALLOC=malloc
# (every object through malloc). Prints digests of the results.
source "$(dirname "$0")/lib.sh"
PY=${PYTHON:-/usr/bin/python3}
need "$PY" python3
export PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
for mode in pymalloc malloc; do
    echo "== PYTHONMALLOC=$mode"
    PYTHONMALLOC=$mode run_prog "$PY" "$(dirname "$0")/python_workload.py" "$RA_SCALE"
done
