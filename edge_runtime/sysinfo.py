"""Facts about the machine the planner and doctor need: memory available, cgroup limit, CPU features."""
from __future__ import annotations

import os
from pathlib import Path

_CGROUP_V2_MAX = "max"
# cgroup v1 reports "no limit" as a huge page-aligned number; anything above this is treated as unlimited.
_UNLIMITED = 1 << 60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == _CGROUP_V2_MAX:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED else None


def _own_cgroup_paths() -> list[tuple[str, str]]:
    """(controller list, path) pairs from /proc/self/cgroup."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def cgroup_memory_limit() -> int | None:
    """The tightest memory limit of this process's cgroup (v2 memory.max or v1 memory.limit_in_bytes)."""
    limits: list[int] = []
    for controllers, own_path in _own_cgroup_paths():
        rel = own_path.lstrip("/")
        if controllers == "":
            # cgroup v2: the limit of every ancestor applies
            node = Path("/sys/fs/cgroup") / rel
            for candidate in [node, *node.parents]:
                if not str(candidate).startswith("/sys/fs/cgroup"):
                    break
                value = _read_int(candidate / "memory.max")
                if value is not None:
                    limits.append(value)
        elif "memory" in controllers.split(","):
            value = _read_int(Path("/sys/fs/cgroup/memory") / rel / "memory.limit_in_bytes")
            if value is not None:
                limits.append(value)
    return min(limits) if limits else None


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                out[key] = int(fields[0]) * (1024 if len(fields) > 1 and fields[1] == "kB" else 1)
    except OSError:
        pass
    return out


def mem_available() -> int | None:
    return meminfo().get("MemAvailable")


def memory_budget(configured: int | None) -> tuple[int, str]:
    """The budget to plan against and where it came from: config, else cgroup limit, else MemAvailable."""
    if configured is not None:
        return configured, "memory_budget in config"
    limit = cgroup_memory_limit()
    if limit is not None:
        return limit, "cgroup memory limit"
    available = mem_available()
    if available is not None:
        return available, "MemAvailable"
    return 2 * 1024**3, "fallback (2 GiB; no /proc/meminfo)"


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size of a process (this one by default)."""
    status = Path(f"/proc/{pid or os.getpid()}/status")
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
