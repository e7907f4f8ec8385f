"""Benchmark harness: time an op and its baseline in the same process, against a measured ceiling.

Every figure a benchmark reports is either a ratio against a baseline timed in the same run, or
bytes moved per second next to a bandwidth ceiling measured in the same run. Results are written
as JSON with the machine description, under bench/results/<name>-<cpu|gpu model>.json.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Iterable

import torch

RESULTS_DIR = os.environ.get("DOMINO_BENCH_RESULTS",
                             os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))


def _sync(device: torch.device | str | None):
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], *, warmup: int = 3, iters: int = 20,
            device: torch.device | str | None = "cpu", min_time_s: float = 0.0) -> dict:
    """Median and spread of ``fn()`` wall time in microseconds. On CUDA each call is timed with
    events around it (so launch overhead is included, host-side gaps between calls are not)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    cuda = device is not None and torch.device(device).type == "cuda"
    while len(times) < iters or (time.perf_counter() - start_all) < min_time_s:
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        if len(times) >= 10 * iters:
            break
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median_us": statistics.median(times), "p10_us": q(0.1), "p90_us": q(0.9),
            "min_us": times[0], "n": len(times)}


def time_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int = 1, iters: int = 5,
                     device: torch.device | str | None = "cpu") -> dict[str, dict]:
    """time_fn for several functions, called in turn (a, b, c, a, b, c, ...): on a shared or
    throttled machine whose memory bandwidth drifts over seconds, every function then sees the
    same conditions, so their ratios are stable even when the absolute times are not."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            times[name].append(time_fn(fn, warmup=0, iters=1, device=device)["median_us"])
    out = {}
    for name, ts in times.items():
        ts.sort()
        q = lambda f: ts[min(len(ts) - 1, int(f * len(ts)))]  # noqa: E731
        out[name] = {"median_us": statistics.median(ts), "p10_us": q(0.1), "p90_us": q(0.9),
                     "min_us": ts[0], "n": len(ts)}
    return out


def copy_bandwidth_gbs(device: torch.device | str = "cpu", nbytes: int | None = None) -> float:
    """Measured memory bandwidth ceiling: (bytes read + bytes written) / s of a large copy."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), warmup=2, iters=10, device=device)
    return 2 * nbytes / (t["median_us"] * 1e-6) / 1e9


def read_bandwidth_gbs(device: torch.device | str = "cpu", nbytes: int | None = None) -> float:
    """Measured read-only bandwidth ceiling: bytes read / s of a large sum reduction."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    t = time_fn(lambda: src.sum(), warmup=2, iters=10, device=device)
    return nbytes / (t["median_us"] * 1e-6) / 1e9


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    info = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_sms=p.multi_processor_count,
                    gpu_mem_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def device_tag(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return "gpu-" + torch.cuda.get_device_name(device).replace(" ", "_").replace("/", "_")
    return "cpu"


def write_results(name: str, rows: list[dict], extra: dict | None = None,
                  device: torch.device | str = "cpu") -> str:
    """Write ``rows`` plus the machine description to bench/results/<name>-<device>.json, and its
    plot beside it (bench/plots.py; needs matplotlib)."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}-{device_tag(device)}.json")
    payload = {"benchmark": name, "machine": machine_info(device),
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               **(extra or {}), "rows": rows}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    from bench.plots import save_png

    try:  # the JSON is the result; a plot that cannot be drawn must not fail a long benchmark
        png = save_png(path)
    except Exception as err:  # noqa: BLE001
        print(f"[plots] no plot for {path}: {err!r} (redraw with python -m bench.report --plots)")
        png = None
    if png:
        print(f"plot: {png}")
    return path


def finish(name: str, rows: list[dict], extra: dict, ok: bool, failure: str,
           device: torch.device | str = "cpu") -> int:
    """Write the results (``write_results``) and return a decode benchmark's exit status: 0, or 1
    with ``failure`` on stderr when an output check failed (``ok`` false)."""
    print(f"wrote {write_results(name, rows, extra, device=device)}")
    if not ok:
        print(f"ERROR: {failure}", file=sys.stderr)
    return 0 if ok else 1


def print_table(rows: Iterable[dict], columns: list[str]) -> None:
    rows = list(rows)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)))
