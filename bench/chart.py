"""The results chart: throughput per scenario, latency percentiles, in-flight time vs ideal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GATEWAY = "#2b6cb0"
REFERENCE = "#a0aec0"


def _throughput(s: dict[str, Any]) -> list[tuple[str, float, str]]:
    bars: list[tuple[str, float, str]] = []
    if sub := s.get("submit"):
        bars += [
            ("submit\ngateway", sub["gateway_api"]["per_second"], GATEWAY),
            ("submit\nbaseline", sub["baseline"]["per_second"], REFERENCE),
            ("raw\ninsert", sub["raw_insert"]["per_second"], REFERENCE),
        ]
        if group := sub.get("group_commit"):
            bars.append(("group commit\n(no HTTP)", group["per_second"], REFERENCE))
    if e := s.get("end_to_end"):
        for key, label in (("serve", "e2e\nserve"), ("api_worker", "e2e\napi+worker")):
            if key in e:
                bars.append((label, e[key]["jobs_per_second"], GATEWAY))
    if q := s.get("poll"):
        bars += [
            ("poll\ngateway", q["gateway"]["per_second"], GATEWAY),
            ("poll\nbaseline", q["baseline"]["per_second"], REFERENCE),
        ]
    return bars


def _latencies(s: dict[str, Any]) -> list[tuple[str, float, float]]:
    rows: list[tuple[str, float, float]] = []
    if sub := s.get("submit"):
        rows += [
            ("submit\ngateway", sub["gateway_api"]["p50_ms"], sub["gateway_api"]["p99_ms"]),
            ("submit\nbaseline", sub["baseline"]["p50_ms"], sub["baseline"]["p99_ms"]),
            ("raw\ninsert", sub["raw_insert"]["p50_ms"], sub["raw_insert"]["p99_ms"]),
        ]
    if p := s.get("pickup"):
        rows.append(("pickup", p["p50_ms"], p["p99_ms"]))
    if q := s.get("poll"):
        rows += [
            ("poll\ngateway", q["gateway"]["p50_ms"], q["gateway"]["p99_ms"]),
            ("poll\nbaseline", q["baseline"]["p50_ms"], q["baseline"]["p99_ms"]),
        ]
    return rows


def _label(ax: Any, bars: Any, fmt: str) -> None:
    for bar in bars:
        height = bar.get_height()
        ax.annotate(
            fmt.format(height),
            (bar.get_x() + bar.get_width() / 2, height),
            ha="center",
            va="bottom",
            fontsize=7,
            xytext=(0, 2),
            textcoords="offset points",
        )


def draw(results: dict[str, Any], path: Path) -> None:
    """Write the chart of ``results`` (as written to results.json) to ``path`` (PNG)."""
    s = results.get("scenarios", {})
    fig, axes = plt.subplots(
        1, 3, figsize=(17, 5.5), gridspec_kw={"width_ratios": [7, 6, 2.5]}, layout="constrained"
    )
    ax = axes[0]
    bars = _throughput(s)
    drawn = ax.bar(
        range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars], edgecolor="black"
    )
    _label(ax, drawn, "{:.0f}")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("per second")
    ax.set_title("Throughput (requests, inserts or jobs per second)")

    ax = axes[1]
    rows = _latencies(s)
    xs = range(len(rows))
    width = 0.38
    p50 = ax.bar([x - width / 2 for x in xs], [r[1] for r in rows], width, label="p50")
    p99 = ax.bar([x + width / 2 for x in xs], [r[2] for r in rows], width, label="p99")
    _label(ax, p50, "{:.1f}")
    _label(ax, p99, "{:.1f}")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(list(xs), [r[0] for r in rows], fontsize=8)
    ax.set_ylabel("milliseconds")
    ax.set_title("Latency percentiles")
    ax.legend()

    ax = axes[2]
    if f := s.get("in_flight"):
        drawn = ax.bar(
            ["measured", "ideal", "ideal at\nsubmit pace"],
            [f["seconds"], f["ideal_seconds"], f.get("ideal_given_submits_seconds", 0.0)],
            color=[GATEWAY, REFERENCE, REFERENCE],
            edgecolor="black",
        )
        ax.tick_params(axis="x", labelsize=8)
        _label(ax, drawn, "{:.2f}")
        ax.set_title(
            f"In flight: {f['jobs']} jobs x {f['upstream_latency_s']:g}s\n"
            f"worker peak RSS {f['worker_peak_rss_mb']:.0f} MB",
            fontsize=10,
        )
        ax.set_ylabel("seconds to complete all")
    else:
        ax.set_axis_off()

    machine = results.get("machine", {})
    fig.suptitle(
        f"asyncgate benchmark, {machine.get('date', '')[:10]}: {machine.get('cores')} cores "
        f"({machine.get('cpu_model')}), load generator on the same machine",
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
