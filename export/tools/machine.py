"""This machine, for benchmarks and the servers tests start: the CPU model and the ISA features that
matter for OpenVINO and numpy (from ``/proc/cpuinfo``; Linux), CPU seconds, a free local port. No
heavy imports: benchmark children that measure their own memory and stdlib-only helpers use it too."""

from __future__ import annotations

import os
import resource
import socket

__all__ = ["ISA_FLAGS", "cpu_line", "cpu_seconds", "free_port"]

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_line() -> str:
    """``"AMD EPYC (avx2, avx512f, ...), 2 cpus"``; ``"unknown (...)"`` where /proc/cpuinfo is missing."""
    name, flags = "unknown", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown":
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ISA_FLAGS if f in flags]
    return f"{name} ({', '.join(isa)}), {os.cpu_count()} cpus"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (for CPU-s next to wall seconds)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` right now (for a server a test or benchmark starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
