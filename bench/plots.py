"""PNG plots of the benchmark results, drawn from the JSON files alone.

``save_png(json_path)`` writes ``<name>.png`` beside ``<name>.json``; ``harness.write_results``
calls it after every benchmark, and ``python -m bench.report --plots`` redraws every plot from
``bench/results/*.json``. Each benchmark has one plot function, chosen by the JSON's
``benchmark`` field. The plots read rows by column name and skip rows that lack the columns they
draw, so benchmarks may add rows and columns without breaking them. matplotlib is optional (the
``bench`` extra): without it no plot is written and the benchmark still succeeds.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Callable

COLORS = {"ours": "#1f77b4", "baseline": "#ff7f0e", "baseline2": "#d62728", "floor": "#2ca02c"}


def _subtitle(data: dict) -> str:
    m = data.get("machine", {})
    where = f"GPU {m['gpu']}" if "gpu" in m else f"CPU {m.get('cpu', '?')}, {m.get('cpu_cores', '?')} cores"
    return f"{where}, torch {m.get('torch', '?')}, {data.get('time', '')[:10]}"


def _rows(data: dict, *columns: str) -> list[dict]:
    return [r for r in data.get("rows", []) if all(isinstance(r.get(c), (int, float)) for c in columns)]


def _label(row: dict, keys: tuple[str, ...]) -> str:
    """The row's values of ``keys`` (numbers as key=value); absent keys and "-" placeholders skipped."""
    return " ".join(f"{k}={row[k]}" if k in ("B", "T", "batch", "prefix") else str(row[k])
                    for k in keys if k in row and row[k] not in ("-", ""))


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]], colors=None):
    """One cluster of bars per group, one bar per series (None: no bar)."""
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        if pts:
            ax.bar([p[0] for p in pts], [p[1] for p in pts], width, label=name,
                   color=(colors or {}).get(name))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30 if max(map(len, groups), default=0) > 12 else 0,
                       ha="right" if max(map(len, groups), default=0) > 12 else "center")


def _speedup_bars(ax, labels: list[str], speedups: list[float], baseline: str):
    """Horizontal bars of baseline time / our time on a log axis, 1x marked."""
    ys = range(len(labels))
    ax.barh(ys, speedups, color=COLORS["ours"])
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, s in zip(ys, speedups):
        ax.text(s, y, f" {s:.1f}x", va="center", fontsize=8)
    ax.set_xlabel(f"speedup over {baseline} (same run; log scale)")


def plot_rollout(data: dict, ax) -> None:
    """Rollout time per batch next to the eager loops and the embed_proj.2 read floor."""
    rows = _rows(data, "batch", "ours_table_us")
    groups = [f"batch {r['batch']}" for r in rows]
    ms = lambda key: [r[key] / 1e3 if isinstance(r.get(key), (int, float)) else None for r in rows]  # noqa: E731
    read_floor = [r["ours_table_us"] / r["x_read_floor"] / 1e3 if r.get("x_read_floor") else None for r in rows]
    _grouped_bars(ax, groups, {"ours (fused rollout)": ms("ours_table_us"), "eager bf16": ms("eager_bf16_us"),
                               "eager fp32": ms("eager_fp32_us"), "embed_proj.2 read floor": read_floor},
                  {"ours (fused rollout)": COLORS["ours"], "eager bf16": COLORS["baseline"],
                   "eager fp32": COLORS["baseline2"], "embed_proj.2 read floor": COLORS["floor"]})
    for i, r in enumerate(rows):
        if r.get("x_read_floor"):
            ax.text(i - 0.3, r["ours_table_us"] / 1e3, f"{r['x_read_floor']:.2f}x\nfloor", ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylabel("ms per rollout (median)")
    s = data.get("shapes", {})
    ax.set_title(f"domino_rollout: N={s.get('N', '?')}, V={s.get('V', '?')}, E={s.get('E', '?')}, "
                 f"{data.get('weights', '')} weights")


def plot_verify(data: dict, ax) -> None:
    rows = _rows(data, "speedup")
    _speedup_bars(ax, [_label(r, ("B", "T", "rule", "filters")) for r in rows], [r["speedup"] for r in rows],
                  "eager torch")
    ax.set_title(f"verify: V={data.get('vocab', '?')}, {data.get('logits_dtype', '')} logits")


def plot_sampling(data: dict, ax) -> None:
    rows = _rows(data, "speedup")
    _speedup_bars(ax, [_label(r, ("batch", "filters")) for r in rows], [r["speedup"] for r in rows],
                  "eager torch (sort-based filters)")
    ax.set_title(f"sample: V={data.get('vocab', '?')}, {data.get('logits_dtype', '')} logits")


def plot_attention(data: dict, ax) -> None:
    rows = _rows(data, "ours_us", "sdpa_mask_us")
    groups = [_label(r, ("B", "prefix", "T")) for r in rows]
    _grouped_bars(ax, groups, {"ours (paged, tree mask)": [r["ours_us"] / 1e3 for r in rows],
                               "SDPA (contiguous K/V, dense mask)": [r["sdpa_mask_us"] / 1e3 for r in rows]},
                  {"ours (paged, tree mask)": COLORS["ours"], "SDPA (contiguous K/V, dense mask)": COLORS["baseline"]})
    for i, r in enumerate(rows):
        ax.text(i, max(r["ours_us"], r["sdpa_mask_us"]) / 1e3, f"{r['sdpa_mask_us'] / r['ours_us']:.2f}x",
                ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("ms per call (median)")
    ax.set_title(f"tree_attention vs SDPA: heads {data.get('heads', '?')}, d={data.get('head_dim', '?')}, "
                 f"{data.get('dtype', '')}")


def _tokens_per_s(data: dict, ax, value: str, group_keys: tuple[str, ...], series_keys: tuple[str, ...],
                  title: str) -> None:
    """Tokens/s, one cluster per group (temperature or batch), one bar per decoding mode; whatever
    groups and modes the rows hold."""
    rows = _rows(data, value)
    group_of = lambda r: _label(r, group_keys)  # noqa: E731
    series_of = lambda r: _label(r, series_keys) or "?"  # noqa: E731
    groups = list(dict.fromkeys(group_of(r) for r in rows))
    cells: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        cells[series_of(r)][group_of(r)] = r[value]
    _grouped_bars(ax, groups, {name: [by_group.get(g) for g in groups] for name, by_group in cells.items()})
    ax.set_ylabel("tokens / s")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)


def plot_models(data: dict, ax) -> None:
    _tokens_per_s(data, ax, "tok_per_s", ("T",), ("drafter", "drafting", "policy"),
                  f"decode on the trained default pair: {data.get('prompts', '?')} prompts x "
                  f"{data.get('max_new_tokens', '?')} tokens, batch 1")


def plot_e2e(data: dict, ax) -> None:
    _tokens_per_s(data, ax, "tokens_per_s", ("batch", "T", "temperature"), ("mode", "drafter", "drafting"),
                  "decode loop: tokens/s by mode (random-weight target)")


def plot_tree(data: dict, ax) -> None:
    """Tree τ over the chain's τ by budget, one bar per fan-out, and the worst prompt's ratio."""
    rows = _rows(data, "budget", "topk", "tau_ratio")
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    series: dict[str, list[float | None]] = {}
    for k in dict.fromkeys(r["topk"] for r in rows):
        by_budget = {r["budget"]: r for r in rows if r["topk"] == k}
        series[f"topk {k}: mean"] = [by_budget[b]["tau_ratio"] if b in by_budget else None for b in budgets]
        series[f"topk {k}: worst prompt"] = [by_budget[b].get("worst_prompt_ratio") if b in by_budget else None
                                            for b in budgets]
    _grouped_bars(ax, [f"budget {b}" for b in budgets], series)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_ylabel("τ tree / τ chain")
    ax.set_title("dynamic Domino tree vs the chain of min(budget, 16), T=0")
    ax.legend(fontsize=7, ncol=3)


def plot_rollout_tree(data: dict, ax) -> None:
    """Rollout time of the tree and of the chain at the same shapes."""
    rows = _rows(data, "chain_us", "tree_us")
    groups = [f"B={r['batch']} beam={r.get('beam')} depth={r.get('depth')}" for r in rows]
    _grouped_bars(ax, groups, {"chain": [r["chain_us"] / 1e3 for r in rows],
                               "tree": [r["tree_us"] / 1e3 for r in rows]},
                  colors={"chain": COLORS["baseline"], "tree": COLORS["ours"]})
    ax.set_ylabel("ms per rollout")
    ax.set_title("domino_tree_rollout vs domino_rollout (Qwen3-8B head shapes)")


def plot_vllm(data: dict, ax) -> None:
    _tokens_per_s(data, ax, "tok_per_s", (), ("engine", "drafting"),
                  "vLLM CPU build: target-only, ngram, DFlash, Domino plugin, and our loop")


PLOTTERS: dict[str, Callable] = {"rollout": plot_rollout, "verify": plot_verify, "sampling": plot_sampling,
                                 "attention": plot_attention, "models": plot_models, "e2e": plot_e2e,
                                 "tree": plot_tree, "rollout-tree": plot_rollout_tree, "vllm": plot_vllm}


def save_png(json_path: str) -> str | None:
    """Draw the plot of one benchmark JSON beside it; returns the PNG path, or None when the
    benchmark has no plot or matplotlib is not installed."""
    with open(json_path) as f:
        data = json.load(f)
    plotter = PLOTTERS.get(data.get("benchmark", ""))
    if plotter is None or not _rows(data):
        return None
    try:
        import matplotlib
    except ImportError:
        print(f"[plots] matplotlib is not installed (pip install 'domino-kernels[bench]'): no plot for {json_path}")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    plotter(data, ax)
    if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(axis="x" if plotter in (plot_verify, plot_sampling) else "y", alpha=0.3)
    fig.text(0.99, 0.01, _subtitle(data) + f"; {os.path.basename(json_path)}", ha="right", va="bottom",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    png = os.path.splitext(json_path)[0] + ".png"
    # No timestamp in the file, so redrawing unchanged JSON gives an identical PNG.
    fig.savefig(png, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return png
