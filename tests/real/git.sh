#!/usr/bin/env bash
# git: builds a repository with fixed authors and dates (so every hash is
# reproducible): files written, modified, renamed and deleted over many commits, a
# branch and a merge, then gc, fsck, log, diff, blame, grep and archive. Every git
# process is the program under test.
source "$(dirname "$0")/lib.sh"
need git git
COMMITS=$((100 * RA_SCALE))
REPO="$WORK/repo"

export GIT_AUTHOR_NAME="Test Author" GIT_AUTHOR_EMAIL="author@example.invalid"
export GIT_COMMITTER_NAME="Test Committer" GIT_COMMITTER_EMAIL="committer@example.invalid"
export GIT_CONFIG_NOSYSTEM=1 HOME="$WORK" TZ=UTC LC_ALL=C
export GIT_AUTHOR_DATE GIT_COMMITTER_DATE

g() { run_prog git -C "$REPO" "$@"; }

set_date() { GIT_AUTHOR_DATE="@$((1700000000 + $1 * 3600)) +0000"; GIT_COMMITTER_DATE="$GIT_AUTHOR_DATE"; }

# write_file PATH SEED LINES: deterministic text content.
write_file() {
    mkdir -p "$(dirname "$1")"
    awk -v seed="$2" -v n="$3" 'BEGIN { x = seed; for (i = 0; i < n; i++) {
        x = (x * 1103515245 + 12345) % 2147483648;
        printf "line %d of %d: value %d %s\n", i, seed, x % 100000, substr("abcdefghijklmnopqrstuvwxyz", 1 + x % 20, 6) } }' >"$1"
}

mkdir -p "$REPO"
run_prog git init -q -b main "$REPO"
g config core.autocrlf false
g config gc.auto 0
for i in $(seq 1 "$COMMITS"); do
    set_date "$i"
    for j in 0 1 2; do
        write_file "$REPO/src/dir$(( (i + j) % 7 ))/file$(( (i * 3 + j) % 40 )).txt" "$((i * 10 + j))" "$((20 + (i * 7 + j) % 200))"
    done
    if [ $((i % 10)) -eq 0 ] && [ -f "$REPO/src/dir0/file0.txt" ]; then
        g mv -f src/dir0/file0.txt "src/moved/file$i.txt" 2>/dev/null || true
    fi
    if [ $((i % 17)) -eq 0 ]; then
        g rm -q -r --ignore-unmatch "src/dir$((i % 7))/file$((i % 40)).txt"
    fi
    g add -A
    g commit -q -m "commit $i" -m "Touches dir$((i % 7)); round $i of $COMMITS."
    if [ "$i" -eq $((COMMITS / 2)) ]; then
        g branch feature
    fi
done
g checkout -q feature
for i in $(seq 1 20); do
    set_date "$((COMMITS + i))"
    write_file "$REPO/feature/f$i.txt" "$((9000 + i))" 100
    g add -A
    g commit -q -m "feature $i"
done
g checkout -q main
set_date "$((COMMITS + 30))"
g merge -q --no-ff -m "merge feature" feature

set_date "$((COMMITS + 31))"
g gc -q --aggressive --prune=now
g fsck --strict --no-progress
g rev-parse HEAD HEAD~10 feature
g log --format='%H %an %ad %s' --date=iso --name-status | sha256sum | cut -c1-32
g log --stat --format='%h %s' -n 20
g diff --stat HEAD~40 HEAD | tail -n 5
g blame -s "$(g ls-files src | sed -n 5p)" | head -n 20
g grep -c 'value 9' | sort | head -n 20
g shortlog -s -n
g rev-list --all --objects | sha256sum | cut -c1-32
g archive --format=tar HEAD | sha256sum | cut -c1-32
g count-objects -v | grep -E '^(count|in-pack|packs|prune-packable|garbage):'
