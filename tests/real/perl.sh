#!/usr/bin/env bash
# perl workload (perl_workload.pl): hashes, arrays, strings, regexes, sorting,
# sprintf, closures, references, a fork and a child process; prints digests.
source "$(dirname "$0")/lib.sh"
need perl perl
export PERL_HASH_SEED=0 PERL_PERTURB_KEYS=0
run_prog perl "$(dirname "$0")/perl_workload.pl" "$RA_SCALE"
