#!/usr/bin/env bash
# redis-server (the program under test) on 127.0.0.1 at a free port, without
# persistence: SET/GET checks with redis-cli (small, large and binary values, lists,
# hashes, expiry), a bounded redis-benchmark run (only its deterministic parts are
# printed), INFO/MEMORY commands (which reach the allocator's jemalloc-compatible
# API under our preload), and a clean SHUTDOWN whose exit status is checked.
source "$(dirname "$0")/lib.sh"
need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
REQUESTS=$((20000 * RA_SCALE))
SERVER_WAIT_SECONDS=20

free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port found" >&2
    exit 1
}

PORT=$(free_port)
cli() { timeout 60 redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }

exec_prog redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no \
    --daemonize no --dir "$WORK" --logfile "$WORK/redis.log" --pidfile "$WORK/redis.pid" \
    --protected-mode yes &
SERVER=$!
# The server itself (not its timer, if any) must not outlive the script.
on_exit "[ -s '$WORK/redis.pid' ] && kill -9 \$(cat '$WORK/redis.pid') 2>/dev/null"
on_exit "kill -9 $SERVER 2>/dev/null"

for i in $(seq 1 $((SERVER_WAIT_SECONDS * 10))); do
    [ "$(cli ping 2>/dev/null)" = PONG ] && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/redis.log" >&2; echo "redis-server died" >&2; exit 1; }
    [ "$i" -lt $((SERVER_WAIT_SECONDS * 10)) ] || { echo "redis-server did not answer" >&2; exit 1; }
    sleep 0.1
done
echo "server up"
# Which allocator the server runs on differs by mode, so it goes to stderr.
if grep -q librangealloc "/proc/$(cat "$WORK/redis.pid")/maps" 2>/dev/null; then
    echo "redis-server: librangealloc.so is mapped" >&2
fi

# Values: small, 1 MiB of text, 100 KB of binary through -x.
cli set greeting "hello world"
cli get greeting
head -c 1048576 /dev/zero | tr '\0' 'r' >"$WORK/big.txt"
cli -x set big <"$WORK/big.txt"
cli --no-raw strlen big
# Through a file: `head` closing the pipe early would kill redis-cli with SIGPIPE (its
# trailing newline comes after the value), which pipefail turned into a failed run.
cli get big >"$WORK/got.txt"
head -c 1048576 "$WORK/got.txt" | sha256sum | cut -c1-32
sha256sum <"$WORK/big.txt" | cut -c1-32
awk 'BEGIN { for (i = 0; i < 100000; i++) printf "%c", 1 + (i * 7919) % 255 }' >"$WORK/bin.dat"
cli -x set bin <"$WORK/bin.dat"
cli --no-raw strlen bin
for i in $(seq 1 200); do echo "RPUSH list item-$i"; echo "HSET hash field-$i value-$((i * i))"; done | cli >/dev/null
cli llen list
cli lrange list 95 99
cli hget hash field-150
cli hlen hash
cli set volatile x PX 100 >/dev/null
sleep 0.3
cli --no-raw exists volatile
cli append greeting ", again"
cli get greeting
cli incrby counter 41
cli incr counter

# Load: bounded request counts; print only which tests completed.
timeout 300 redis-benchmark -h 127.0.0.1 -p "$PORT" -n "$REQUESTS" -c 20 -d 256 \
    -t set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,lrange_100,mset -q --csv \
    >"$WORK/bench.csv"
cut -d, -f1 "$WORK/bench.csv"
timeout 120 redis-benchmark -h 127.0.0.1 -p "$PORT" -n "$REQUESTS" -r 10000 -c 10 -d 4096 \
    -t set,get -q >/dev/null
cli --no-raw dbsize | sed 's/(integer) //' | awk '{ print ($1 > 1000 ? "dbsize > 1000" : "dbsize small: " $1) }'

# Allocator-facing commands: they must succeed (their numbers differ by allocator).
cli info memory | grep -c '^used_memory:'
# allocator_* come from mallctl("stats.allocated" / "stats.active" / "stats.resident").
cli info memory | awk -F: '/^allocator_(allocated|active|resident):/ { if ($2 + 0 > 0) n++ }
    END { print n + 0 " allocator statistics above zero" }'
cli memory stats | grep -c 'allocator'
cli memory malloc-stats >/dev/null && echo "malloc-stats answered"
# MEMORY PURGE: mallctl("arenas.narenas"), then "arena.<narenas>.purge"; OK or an error.
cli memory purge
cli flushall
cli get greeting

cli shutdown nosave >/dev/null 2>&1 || true
status=0
wait "$SERVER" || status=$?
echo "server exit $status"
grep -iE 'panic|assert|crash|bug report' "$WORK/redis.log" >&2 && exit 1
[ "$status" -eq 0 ]
