"""PNG plots of benchmark results: percentiles against offered rate, throughput over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def latency_vs_rate(
    series: dict[str, list[dict[str, Any]]], title: str, path: Path, target_ms: float | None = None
) -> None:
    """One line per system: p50 (dashed) and p99 (solid) against offered rate; achieved rate below."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    for name, runs in series.items():
        rates = [r["offered_rate"] for r in runs]
        (line,) = top.plot(rates, [r["p99_ms"] or float("nan") for r in runs], marker="o", label=f"{name} p99")
        top.plot(rates, [r["p50_ms"] or float("nan") for r in runs], linestyle="--", color=line.get_color(),
                 label=f"{name} p50")  # fmt: skip
        bottom.plot(rates, [r["achieved_rate"] for r in runs], marker="o", color=line.get_color(), label=name)
    if target_ms:
        top.axhline(target_ms, color="grey", linewidth=0.8, linestyle=":", label=f"target {target_ms} ms")
    top.set_yscale("log")
    top.set_ylabel("latency (ms, log)")
    top.set_title(title)
    top.legend(fontsize=8)
    top.grid(True, which="both", alpha=0.3)
    lim = max(r["offered_rate"] for runs in series.values() for r in runs)
    bottom.plot([0, lim], [0, lim], color="grey", linewidth=0.8, linestyle=":", label="offered")
    bottom.set_xlabel("offered rate (per second)")
    bottom.set_ylabel("achieved (per second)")
    bottom.legend(fontsize=8)
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def throughput_over_time(series: dict[str, list[tuple[float, float]]], title: str, path: Path, ylabel: str) -> None:
    """One line per system: (seconds since start, rate)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    ax.set_xlabel("seconds")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def percentile_bars(
    rows: list[dict[str, Any]], label_key: str, title: str, path: Path, target_ms: float | None = None
) -> None:
    """Grouped bars of p50/p99/p999/max per configuration."""
    fig, ax = plt.subplots(figsize=(10, 5))
    keys = ["p50_ms", "p99_ms", "p999_ms", "max_ms"]
    width = 0.2
    for k, key in enumerate(keys):
        ax.bar(
            [i + k * width for i in range(len(rows))], [r[key] or 0 for r in rows], width, label=key.replace("_ms", "")
        )
    ax.set_xticks(
        [i + 1.5 * width for i in range(len(rows))], [str(r[label_key]) for r in rows], fontsize=8, rotation=20
    )
    if target_ms:
        ax.axhline(target_ms, color="grey", linewidth=0.8, linestyle=":", label=f"target {target_ms} ms")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
