"""Writing results into BENCHMARKS.md: one section per benchmark, replaced in place on rerun.

Every benchmark script owns one or more named sections, fenced by HTML comments, so that
rerunning one script updates its own tables and leaves the others' numbers untouched.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    """The CPU, the core count and the load as the table is written: speed means little without
    them, and a table that timed nothing (a payload count, a null test) must not say it did."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    return f"{model}, {os.cpu_count()} cores (load average {load} when the table was written)"


def trainer(device: str) -> str:
    """What trained a model, in words, for its card."""
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} GPU ({platform.machine()})"
    return f"{platform.machine()}, {torch.get_num_threads()} CPU threads"


def write_section(out: Path, key: str, body: str) -> None:
    """Replace section ``key`` of ``out`` with ``body`` (or append it), fencing it with markers."""
    begin, end = f"<!-- benchmark:{key}:begin -->", f"<!-- benchmark:{key}:end -->"
    text = f"{begin}\n{body.strip()}\n{end}\n"
    existing = out.read_text() if out.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"{re.escape(begin)}.*?{re.escape(end)}\n?", re.DOTALL)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text, existing)
    else:
        updated = existing.rstrip("\n") + "\n\n" + text
    out.write_text(updated)
