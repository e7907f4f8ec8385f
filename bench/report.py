"""Render a benchmark JSON (bench/results/*.json) as a Markdown table, for the README and docs,
or redraw the plots (a PNG beside each JSON, bench/plots.py) from the JSON files alone.

    python -m bench.report bench/results/sampling-cpu.json [col1,col2,...]
    python -m bench.report --plots [bench/results/*.json]     (default: every JSON in bench/results)
"""
from __future__ import annotations

import glob
import json
import os
import sys


def markdown(path: str, columns: list[str] | None = None) -> str:
    with open(path) as f:
        data = json.load(f)
    rows = data["rows"]
    columns = columns or list(rows[0].keys())
    fmt = lambda v: (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}") if isinstance(v, float) else str(v)  # noqa: E731
    m = data.get("machine", {})
    lines = [f"Machine: {m.get('cpu', '?')}, {m.get('cpu_cores', '?')} cores"
             + (f", GPU {m['gpu']}" if "gpu" in m else "") + f", torch {m.get('torch', '?')}; {data.get('time', '')}",
             "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plots(paths: list[str]) -> int:
    from bench.plots import save_png

    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    for path in paths or sorted(glob.glob(os.path.join(results, "*.json"))):
        png = save_png(path)
        print(f"{path}: {png or 'no plot'}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plots"]:
        sys.exit(plots(sys.argv[2:]))
    print(markdown(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else None))
