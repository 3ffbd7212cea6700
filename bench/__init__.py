"""Benchmarks of the bus: not tests. ``python -m bench`` (``make bench``) runs every module here.

Each module has ``main()`` and writes its own section of ``docs/benchmarks.md``
with ``write_section(name, text)``: the text between ``<!-- bench:NAME -->``
and ``<!-- /bench:NAME -->``, leaving the other sections as they are.
"""
from __future__ import annotations

import fcntl
import os
import platform
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:   # the test kit (tests/kit: free ports, scripted incidents, synthetic data)
    sys.path.insert(0, str(ROOT / "tests"))
REPORT = ROOT / "docs" / "benchmarks.md"
_HEAD = ("# Benchmarks\n\nWritten by `make bench` (`python -m bench`); each section by its own module in "
         "`bench/`. Figures are medians of several runs on the machine named in the section.\n")


def machine() -> str:
    """``nproc`` and the CPU model, e.g. '2 cores, AMD EPYC 7B13'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {model}, Python {platform.python_version()}"


def median(values) -> float:
    return statistics.median(values)


def write_section(name: str, text: str) -> Path:
    """Replace (or append) the section ``name`` of docs/benchmarks.md with ``text``."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    with open(REPORT, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # modules of other engineers may write their sections at the same time
        fh.seek(0)
        current = fh.read() or _HEAD
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if pattern.search(current):
            new = pattern.sub(lambda _: block, current)
        else:
            new = current.rstrip() + "\n\n" + block + "\n"
        fh.seek(0)
        fh.truncate()
        fh.write(new)
    return REPORT


def command() -> str:
    """How this run was started, for the report: `python -m bench codec`, or `make bench`."""
    if sys.argv and sys.argv[0].endswith("__main__.py") and sys.argv[1:]:
        return "python -m bench " + " ".join(sys.argv[1:])
    return "make bench"
