"""Where each process of `cocoon bench` spends its CPU, from a py-spy raw profile of the whole run.

    py-spy record --subprocesses --nonblocking --format raw -r 200 -o /tmp/prof.txt -- cocoon bench
    python bench/profile_summary.py /tmp/prof.txt

Per process (named by role and config), the share of its busy samples under each function (inclusive) and the
leaf functions (self). Samples idle in the event loop's poll, and imports at start-up, are left out: what is left
is the time spent serving requests, which `cocoon bench` turns into CPU ms per request.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

IDLE_LEAVES = ("Runner.run", "EpollSelector.select")  # uvloop / selector polling: the process was waiting
SHOWN = ("cocoon/", "aiohttp/web_response", "asyncio/tasks.py", "nacl/", "logging/")
WRAPPERS = ("cocoon/cli.py", "cocoon/__main__.py", "cocoon/runtime.py", "cocoon/bench.py")  # every stack's base


def summarise(lines: list[str], top: int = 14) -> str:
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    busy: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        starts = [i for i, f in enumerate(frames) if f.startswith("process ")]
        if not starts:
            continue
        match = re.search(r"cocoon (\w+)(?: --config \S*/(\S+)\.toml)?", frames[starts[-1]])
        role = (match.group(2) or match.group(1)) if match else frames[starts[-1]][:40]
        calls = [re.sub(r":\d+\)", ")", f) for f in frames[starts[-1] + 1:]]
        if not calls or calls[-1].startswith(IDLE_LEAVES) or any("importlib" in f for f in calls):
            continue
        n = int(count)
        busy[role] += n
        leaves[role][calls[-1]] += n
        for name in set(calls):
            inclusive[role][name] += n
    out = []
    for role, total in busy.most_common():
        out.append(f"== {role}: {total} busy samples")
        shown = [(k, v) for k, v in inclusive[role].most_common()
                 if any(s in k for s in SHOWN) and not any(w in k for w in WRAPPERS)]
        out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in shown[:top]]
        out.append("  self: " + "; ".join(f"{100 * v / total:.0f}% {k}" for k, v in leaves[role].most_common(5)))
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(summarise(f.readlines()))
