"""How a benchmark run reports: progress lines, the goals and the table of figures.

:func:`goals` compares the measured figures with the targets; :func:`table` renders figures,
goals, the machine and the notes as the plain text printed at the end of ``bench.run`` and
written to ``summary.txt``.
"""

from __future__ import annotations

import time
from typing import Any

NOTES = [
    "Load generator, servers and PostgreSQL share one machine "
    "(the load generator runs in the benchmark process and competes for the same cores); "
    "'other' is CPU used meanwhile by unrelated processes on the host.",
    "Pickup latency can be negative: the worker may call the upstream before the client has "
    "read its 202 (both are after the commit).",
]
"""Caveats printed under the table and stored with the results."""


def say(message: str) -> None:
    """A progress line, prefixed with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def goals(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its measured value and whether it is met (absent scenarios are skipped).

    Entries marked ``informational`` check a claim behind the design rather than a goal.
    """
    found: list[dict[str, Any]] = []

    def goal(name: str, value: float, target: str, met: bool, informational: bool = False) -> None:
        entry = {"goal": name, "value": value, "target": target, "met": bool(met)}
        if informational:
            entry["informational"] = True
        found.append(entry)

    if s := scenarios.get("submit"):
        gw, base, raw = s["gateway_api"], s["baseline"], s["raw_insert"]
        ratio = gw["per_second"] / base["per_second"]
        goal("submit / baseline", ratio, ">= 0.80", ratio >= 0.8)
        goal("submit p99 (ms)", gw["p99_ms"], "< 50", gw["p99_ms"] < 50)
        ratio = gw["per_second"] / raw["per_second"]
        goal("submit / raw insert", ratio, "> 1.00", ratio > 1.0)
        if idem := s.get("gateway_api_idempotent"):
            ratio = idem["per_second"] / gw["per_second"]
            goal("idempotent submit / submit", ratio, ">= 0.90", ratio >= 0.9)
        if (idem := s.get("group_commit_idempotent")) and (group := s.get("group_commit")):
            ratio = idem["per_second"] / group["per_second"]
            goal(
                "idempotent / plain group commit",
                ratio,
                ">= 0.90",
                ratio >= 0.9,
                informational=True,
            )
        if group := s.get("group_commit"):
            ratio = group["per_second"] / raw["per_second"]
            goal("group commit / raw insert", ratio, "> 1.00", ratio > 1.0, informational=True)
    if p := scenarios.get("pickup"):
        goal("pickup p50 (ms)", p["p50_ms"], "<= 5", p["p50_ms"] <= 5)
        goal("pickup p99 (ms)", p["p99_ms"], "<= 25", p["p99_ms"] <= 25)
    if f := scenarios.get("in_flight"):
        ratio = f["ratio_to_ideal"]
        goal("in flight / ideal", ratio, "<= 1.20", ratio <= 1.2 and f["failed"] == 0)
        rss = f["worker_peak_rss_mb"]
        goal("worker peak RSS (MB)", rss, "< 250", rss < 250)
    if q := scenarios.get("poll"):
        ratio = q["gateway"]["per_second"] / q["baseline"]["per_second"]
        goal("poll / baseline", ratio, ">= 0.80", ratio >= 0.8)
    if lay := scenarios.get("layouts"):
        api, base = lay["api"], lay["baseline"]
        ratio = api["per_second"] / base["per_second"]
        goal("wrk: submit / baseline", ratio, ">= 0.95", ratio >= 0.95)
        us = api["cpu_us"]["server"]
        goal("wrk: API CPU per submit (us)", us, "<= 300", us <= 300)
        ratio = lay["poll_api"]["per_second"] / lay["poll_baseline"]["per_second"]
        goal("wrk: poll / baseline", ratio, ">= 0.95", ratio >= 0.95)
        us = lay["poll_api"]["cpu_us"]["server"]
        goal("wrk: API CPU per poll (us)", us, "<= 150", us <= 150)
        serve, one = lay["serve"], lay["serve_one_process"]
        ratio = serve["jobs_per_second"] / one["jobs_per_second"]
        goal("wrk: serve / one-process serve, end to end", ratio, ">= 1.50", ratio >= 1.5)
        ratio = serve["per_second"] / api["per_second"]
        goal("wrk: submit under serve / under api", ratio, ">= 1.00", ratio >= 1.0)
    if d := scenarios.get("drain"):
        variants = [d[key] for key in ("empty", "large") if key in d]
        for v in variants:
            us = v["cpu_us"].get("postgres", float("nan"))
            goal(f"drain: PG CPU/job, {_rows(v)} (us)", us, "<= 150", us <= 150)
        if len(variants) == 2:
            ratio = variants[1]["cpu_us"]["postgres"] / variants[0]["cpu_us"]["postgres"]
            goal("drain: PG CPU/job large / empty", ratio, "<= 1.20", ratio <= 1.2)
        p99 = max(v["empty_claim"]["server_p99_ms"] for v in variants)
        goal("drain: empty claim after (ms)", p99, "< 0.1", p99 < 0.1)
    if b := scenarios.get("bodies"):
        if m := b.get("1m"):
            goal("1 MB bodies: submit p99 (ms)", m["p99_ms"], "<= 500", m["p99_ms"] <= 500)
            rss = m["api_peak_rss_mb"]
            goal("1 MB bodies: API peak RSS (MB)", rss, "<= 300", rss <= 300)
    if (a := scenarios.get("at_scale")) and (r := a.get("ratios")):
        for name in ("submit", "poll", "claim"):
            ratio = r[f"{name}_per_second"]
            goal(f"{name} at 1M rows / empty", ratio, ">= 0.90", ratio >= 0.9)
    if (a := scenarios.get("at_scale")) and (w := a.get("sweep")):
        goal("submit during sweep / without", 1 + w["slowdown"], ">= 0.85", w["slowdown"] > -0.15)
        p99 = w["sweeping"]["p99_ms"]
        goal("submit p99 during sweep (ms)", p99, "<= 100", p99 <= 100)
    return found


def _rows(variant: dict[str, Any]) -> str:
    completed = variant["completed_rows"]
    return f"{completed:,} done" if completed else "empty table"


def _cores(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return ""
    keys = ("loadgen", "server", "postgres", "other")
    return "/".join(f"{cpu[k]:.2f}" if k in cpu else "-" for k in keys)


def table(results: dict[str, Any]) -> str:
    """The figures and goals as plain text."""
    s = results.get("scenarios", {})
    rows: list[list[str]] = []

    def add(name: str, figure: str, r: dict[str, Any] | None = None) -> None:
        r = r or {}
        p50, p99 = r.get("p50_ms"), r.get("p99_ms")
        rows.append(
            [
                name,
                figure,
                "" if p50 is None else f"{p50:.2f}",
                "" if p99 is None else f"{p99:.2f}",
                _cores(r.get("cpu")),
            ]
        )

    if sub := s.get("submit"):
        for key, name in (
            ("gateway_api", "submit: gateway (api)"),
            ("gateway_api_idempotent", "submit: gateway, Idempotency-Key"),
            ("baseline", "submit: baseline app (no DB)"),
            ("raw_insert", "submit: raw psycopg insert"),
            ("group_commit", "submit: group commit (no HTTP)"),
            ("group_commit_idempotent", "submit: group commit, Idempotency-Key"),
        ):
            if key in sub:
                add(name, f"{sub[key]['per_second']:.0f} /s", sub[key])
    if p := s.get("pickup"):
        add(f"pickup at {p['rate']:g}/s (serve)", f"{p['matched']} jobs", p)
    if e := s.get("end_to_end"):
        for key, name in (("serve", "end to end: serve"), ("api_worker", "end to end: api+worker")):
            if key in e:
                add(name, f"{e[key]['jobs_per_second']:.0f} jobs/s", {"cpu": e[key]["cpu"]})
    if f := s.get("in_flight"):
        add(
            f"in flight: {f['jobs']} x {f['upstream_latency_s']:g}s",
            f"{f['seconds']:.2f} s (ideal {f['ideal_seconds']:g})",
            {"cpu": f["cpu"]},
        )
        add("in flight: worker peak RSS", f"{f['worker_peak_rss_mb']:.0f} MB")
    if q := s.get("poll"):
        for key, name in (("gateway", "poll: gateway (api)"), ("baseline", "poll: baseline app")):
            add(name, f"{q[key]['per_second']:.0f} /s", q[key])
    if lay := s.get("layouts"):
        for key, name in (
            ("api", "wrk: submit, api"),
            ("serve_one_process", "wrk: submit, serve in one process"),
            ("serve", "wrk: submit, serve"),
            ("baseline", "wrk: submit, baseline app"),
            ("poll_api", "wrk: poll, api"),
            ("poll_baseline", "wrk: poll, baseline app"),
        ):
            r = lay[key]
            e2e = f", {r['jobs_per_second']:.0f} jobs/s e2e" if "jobs_per_second" in r else ""
            add(name, f"{r['per_second']:.0f} /s{e2e}, {r['cpu_us']['server']:.0f} us", r)
    if d := s.get("drain"):
        for key in ("empty", "large"):
            if v := d.get(key):
                us = v["cpu_us"]
                add(
                    f"drain {v['jobs']:,}: {_rows(v)}",
                    f"{v['jobs_per_second']:.0f} jobs/s, pg {us.get('postgres', 0):.0f} "
                    f"us/job, worker {us.get('worker', 0):.0f}",
                    {"cpu": {**v["cpu"], "server": v["cpu"].get("worker", 0)}},
                )
                claim = v["empty_claim"]
                add(
                    f"  empty claim after, in the server ({_rows(v)})",
                    f"idle {claim.get('idle_server_p50_ms', 0):.2f}, "
                    f"full {claim['full_server_p99_ms']:.2f} ms p99",
                    {"p50_ms": claim["server_p50_ms"], "p99_ms": claim["server_p99_ms"]},
                )
    if b := s.get("bodies"):
        for key, name in (("64k", "64 KB bodies"), ("1m", "1 MB bodies")):
            if r := b.get(key):
                cpu = r.get("cpu_us", {})
                add(f"submit: {name} (api)", f"{r['per_second']:.0f} /s", r)
                add(
                    f"  {name}: API RSS, CPU/job api/pg",
                    f"{r['api_peak_rss_mb']:.0f} MB, "
                    f"{cpu.get('api', 0) / 1000:.1f}/{cpu.get('postgres', 0) / 1000:.1f} ms",
                )
    if a := s.get("at_scale"):
        for size in ("small", "large"):
            if f := a.get(size):
                rows_text = "empty" if size == "small" else f"{a['rows']} rows"
                add(
                    f"at scale, {rows_text}: submit",
                    f"{f['submit']['per_second']:.0f} /s",
                    f["submit"],
                )
                add(f"at scale, {rows_text}: poll", f"{f['poll']['per_second']:.0f} /s", f["poll"])
                claim = f["claim"]
                add(f"at scale, {rows_text}: claim", f"{claim['per_second']:.0f} jobs/s", claim)
        if w := a.get("sweep"):
            add(
                "sweep: submit, no sweeper",
                f"{w['no_sweeper']['per_second']:.0f} /s",
                w["no_sweeper"],
            )
            add(
                f"sweep: submit while {w['swept']['deleted']} deleted",
                f"{w['sweeping']['per_second']:.0f} /s",
                w["sweeping"],
            )
    head = ["scenario", "figure", "p50 ms", "p99 ms", "cores: loadgen/server/pg/other"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    out.append("")
    g = results.get("goals", [])
    name_width = max((len(x["goal"]) for x in g), default=4)
    out.append("goals")
    for x in g:
        state = "met" if x["met"] else "NOT MET"
        if x.get("informational"):
            state += " (informational)"
        out.append(f"  {x['goal'].ljust(name_width)}  {x['value']:9.3f}  {x['target']:>7}  {state}")
    m = results.get("machine", {})
    out.append("")
    out.append(
        f"machine: {m.get('cores')} cores, {m.get('cpu_model')}, Python {m.get('python')}, "
        f"{str(m.get('postgresql', '?')).split(' on ')[0]}, load average at start "
        f"{m.get('load_average_at_start')}"
    )
    out.extend(f"note: {n}" for n in results.get("notes", []))
    others = [c["other"] for c in _cpu_figures(s) if "other" in c]
    if others and max(others) > 0.25:
        out.append(
            f"WARNING: unrelated processes kept up to {max(others):.2f} cores busy during the "
            "measurements; these figures understate what the machine can do."
        )
    return "\n".join(out)


def _cpu_figures(value: Any) -> list[dict[str, float]]:
    """Every ``cpu`` figure set found anywhere in ``value``."""
    if isinstance(value, dict):
        found = [value["cpu"]] if isinstance(value.get("cpu"), dict) else []
        for key, item in value.items():
            if key != "cpu":
                found += _cpu_figures(item)
        return found
    return []
