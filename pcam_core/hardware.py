"""What CPU this is, as the OS tells it (no torch: `bench` names its machine before importing it)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> tuple[str, set[str]]:
    """The CPU's model name with its family and model numbers (virtual machines often show a bare
    "AMD EPYC"), and its instruction-set flags; from /proc/cpuinfo, else what `platform` knows."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        name += f" (family {info['cpu family']} model {info.get('model', '?')})"
    return name, set(info.get("flags", "").split())
