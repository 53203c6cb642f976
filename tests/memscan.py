"""What a process holds in memory, and what files hold: for tests that check a secret never reached a process
(the proxy relaying sealed prompts, answers and media) or its state dir."""

from __future__ import annotations

from pathlib import Path


def process_memory_holds(pid: int, needles: list[bytes]) -> set[bytes]:
    """Which of `needles` appear anywhere in the readable memory of process `pid` (its heap, stacks, mappings)."""
    found: set[bytes] = set()
    overlap = max(len(n) for n in needles)
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or line.rstrip().endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            tail = b""
            at = start
            while at < end:
                size = min(8 << 20, end - at)
                try:
                    mem.seek(at)
                    block = mem.read(size)
                except (OSError, ValueError):
                    break
                window = tail + block
                found.update(n for n in needles if n in window)
                tail = block[-overlap:]
                at += size
    return found


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)}: {n.decode()}" for n in needles if n in data]
    return hits
