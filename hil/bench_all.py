"""Run every ``hil/bench_*.py`` benchmark and merge their results.

Writes ``bench/results.json`` (every benchmark's JSON) and ``bench/RESULTS.md`` (their tables, with the
machine's CPU and core count). A benchmark that fails to run is recorded as failed; the others still run.

``python -m hil.bench_all [NAME ...]`` runs all (or the named) benchmarks; ``--collect`` runs none and
assembles the two files from each benchmark's latest recorded ``bench/NAME.json`` (each of which holds
ratios measured within its own single run).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import traceback

import hil
from hil.report import BENCH_DIR, machine


def main(only: list[str] | None = None, *, collect: bool = False) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(hil.__path__) if m.name.startswith("bench_") and m.name != "bench_all")
    if only:
        names = [n for n in names if n.removeprefix("bench_") in only]
    results, failed = {}, []
    for name in names if collect else []:
        recorded = BENCH_DIR / f"{name.removeprefix('bench_')}.json"
        if recorded.exists():
            results[name.removeprefix("bench_")] = json.loads(recorded.read_text())
    for name in [] if collect else names:
        print(f"\n=== {name} ===", flush=True)
        try:
            res = importlib.import_module(f"hil.{name}").main()
            results[name.removeprefix("bench_")] = res
            if isinstance(res, dict) and res.get("pass") is False:
                failed.append(name)
        except Exception:  # noqa: BLE001 - record and go on to the next benchmark
            traceback.print_exc()
            failed.append(name)
            results[name.removeprefix("bench_")] = {"error": traceback.format_exc(limit=3)}
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / "results.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    m = machine()
    parts = [f"# Benchmark results\n\nOne run of `make bench` on {m['cpu']} ({m['cores']} cores). "
             "Every figure is a ratio against a baseline measured in the same run.\n"]
    for name in names:
        md = BENCH_DIR / f"{name.removeprefix('bench_')}.md"
        if md.exists():
            parts.append(md.read_text())
    (BENCH_DIR / "RESULTS.md").write_text("\n".join(parts))
    print(f"\nwrote {BENCH_DIR / 'results.json'} and {BENCH_DIR / 'RESULTS.md'}; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main([a for a in args if a != "--collect"] or None, collect="--collect" in args))
