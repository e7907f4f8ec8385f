"""Render a benchmark JSON (bench/results/*.json) as a Markdown table, for the README and docs.

    python -m bench.report bench/results/sampling-cpu.json [col1,col2,...]
"""
from __future__ import annotations

import json
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


if __name__ == "__main__":
    print(markdown(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else None))
