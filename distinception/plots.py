"""The small PNG plots the benchmarks and `distinception plan` write. Only matplotlib is
imported (headless), so planning stays free of torch and Ray."""

from __future__ import annotations

import math


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: str, groups: dict[str, dict[str, float]], ylabel: str, title: str) -> str:
    """Grouped bars: one group per scenario, one bar per system."""
    plt = _pyplot()
    systems = list(next(iter(groups.values())))
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
    width = 0.8 / len(systems)
    for j, name in enumerate(systems):
        xs = [i + j * width for i in range(len(groups))]
        vals = [g.get(name, math.nan) for g in groups.values()]
        bars = ax.bar(xs, vals, width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels(list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def line_plot(
    path: str,
    series: dict[str, list[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> str:
    """One line per series, on a log2 x axis with `logx`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=90)
    for name, pts in series.items():
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker=".", label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
