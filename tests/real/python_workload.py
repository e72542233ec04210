"""A deterministic allocation-heavy Python workload; prints one digest per phase."""
import collections
import concurrent.futures
import decimal
import hashlib
import json
import os
import re
import sys

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def digest(obj):
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


def containers():
    d = {}
    for i in range(200_000 * SCALE):
        d[f"key-{i % 50_000}-{i % 7}"] = [i, str(i), (i, i * 2)]
    s = {k[::-1] for k in d}
    lst = sorted(d.items(), key=lambda kv: (len(kv[0]), kv[0]))
    c = collections.Counter(k[-1] for k in d)
    dq = collections.deque(range(10_000))
    for _ in range(100):
        dq.rotate(37)
        dq.appendleft(dq.pop())
    return len(d), len(s), lst[:3], lst[-3:], sorted(c.items()), list(dq)[:5]


def strings():
    parts = []
    for i in range(100_000 * SCALE):
        parts.append(("%d:%x:%o" % (i, i * 31, i * 17)).upper())
    text = "|".join(parts)
    words = re.findall(r"[0-9A-F]{4,}", text)
    replaced = re.sub(r"(\d+):", lambda m: m.group(1)[::-1] + ";", text[:200_000])
    blob = json.dumps({"parts": parts[:20_000], "nested": [{"i": i, "s": "x" * (i % 100)} for i in range(5_000)]})
    back = json.loads(blob)
    return len(text), len(words), words[:5], digest(replaced), len(blob), back["nested"][4_999]["s"][:3]


def numbers():
    f = 1
    for i in range(1, 3_000 * SCALE):
        f *= i
    decimal.getcontext().prec = 200
    root = decimal.Decimal(2).sqrt()
    fib = [0, 1]
    for _ in range(2_000):
        fib.append(fib[-1] + fib[-2])
    return f.bit_length(), f % 1_000_000_007, str(root)[:50], fib[-1] % 1_000_000_007


class Node:
    def __init__(self, value, children=()):
        self.value = value
        self.children = list(children)


def objects():
    def build(depth, value):
        if depth == 0:
            return Node(value)
        return Node(value, [build(depth - 1, value * 3 + k) for k in range(3)])

    total = 0
    for round_ in range(6 * SCALE):
        tree = build(8, round_)
        stack = [tree]
        while stack:
            n = stack.pop()
            total = (total + n.value) % 1_000_000_007
            stack.extend(n.children)
    return total


def threaded():
    def work(seed):
        data = [str(seed * i) for i in range(50_000)]
        data.sort()
        return hashlib.sha256("".join(data).encode()).hexdigest()[:16]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(work, range(16 * SCALE)))


def forked():
    pid = os.fork()
    if pid == 0:
        d = {i: str(i) * 3 for i in range(100_000)}
        os._exit(0 if len(d) == 100_000 else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


for phase in (containers, strings, numbers, objects, threaded, forked):
    print(phase.__name__, digest(phase()), flush=True)
print("done")
