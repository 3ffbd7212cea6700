"""Run every benchmark module of ``bench/`` (or only those named): ``python -m bench [name ...]``."""
from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback

import bench


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
    wanted = argv or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; there are: {', '.join(names)}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted:
        print(f"== bench.{name}", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception:  # one broken benchmark does not stop the others; it is reported
            traceback.print_exc()
            failed.append(name)
        print(f"== bench.{name}: {time.perf_counter() - started:.1f} s", flush=True)
    print(f"figures written to {bench.REPORT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
