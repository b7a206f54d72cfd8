#!/usr/bin/env python3
"""Helpers of scripts/bench.

  bench_report.py oha                      oha's JSON (stdin) -> one result object (stdout)
  bench_report.py median RESULTS NAME      the median rps of the runs called NAME, as an integer
  bench_report.py report RESULTS METRICS OUT
                                           docs/bench/README.md (the table, each figure with its
                                           ratio to its limit) and docs/bench/latency.svg
"""

import json
import statistics
import sys


def oha():
    d = json.load(sys.stdin)
    p = d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution") or {}
    ok = sum(n for code, n in codes.items() if code.startswith("2"))
    failed = sum(n for code, n in codes.items() if not code.startswith("2"))
    # Calls still in flight when the run's time is up are cut off by oha, not failed by the server.
    failed += sum(n for e, n in (d.get("errorDistribution") or {}).items()
                  if e != "aborted due to deadline")
    ms = lambda v: round((v or 0) * 1000, 3)
    print(json.dumps({
        "requests": ok,
        "errors": failed,
        "rps": round(d["summary"]["requestsPerSec"] or 0),
        "p50_ms": ms(p.get("p50")),
        "p90_ms": ms(p.get("p90")),
        "p99_ms": ms(p.get("p99")),
        "p999_ms": ms(p.get("p99.9")),
        "max_ms": ms(d["summary"].get("slowest")),
    }))


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                runs.setdefault(r["name"], []).append(r)
    return runs


def med(runs, name, key="rps"):
    values = [r[key] for r in runs.get(name, []) if key in r]
    return statistics.median(values) if values else None


def median():
    # The median of a run's `rps` (a whole number), or of the key given third.
    key = sys.argv[4] if len(sys.argv) > 4 else "rps"
    value = med(load(sys.argv[2]), sys.argv[3], key) or 0
    print(int(value) if key == "rps" else round(value, 2))


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}{unit}"
    return f"{v:,.0f}{unit}"


def report():
    runs, metrics_path, out = load(sys.argv[2]), sys.argv[3], sys.argv[4]
    m = lambda name, key="rps": med(runs, name, key)
    one = lambda name, key: (runs.get(name) or [{}])[-1].get(key)
    trips = 0
    with open(metrics_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[-2] == "reviews_cache_breaker_trips_total":
                trips += int(float(parts[-1]))

    def ratio(a, b):
        return a / b if a is not None and b else None

    rows = []

    def row(path, value, limit_name, limit, goal, holds):
        r = ratio(value, limit)
        rows.append((path, fmt(value), f"{limit_name} {fmt(limit)}", f"{r:.2f}×" if r else "n/a",
                     goal, "yes" if holds(r) else "**no**"))

    row("JSON list, cache hit (1,000 hot ids), req/s", m("cache-list-hot"),
        "trivial HTTP server", m("floor-http"), "≥ 0.40×", lambda r: r is not None and r >= 0.40)
    row("gRPC ListReviews, cache hit (1,000 hot ids), calls/s", m("cache-grpc-list-hot"),
        "trivial tonic server", m("floor-grpc"), "≥ 0.50×", lambda r: r is not None and r >= 0.50)
    row("JSON list, random ids, cache on (misses), req/s", m("cache-list-random"),
        "same without Redis", m("nocache-list"), "≥ 0.90×", lambda r: r is not None and r >= 0.90)
    row("JSON list, random ids, no Redis, req/s", m("nocache-list"),
        "PostgreSQL alone, list query", m("pg-list"), "≥ 0.35×", lambda r: r is not None and r >= 0.35)
    row("JSON meta, random ids, no Redis, req/s", m("nocache-meta"),
        "PostgreSQL alone, meta query", m("pg-meta"), "≥ 0.40×", lambda r: r is not None and r >= 0.40)

    open1k = (runs.get("cache-open-1000") or [{}])[-1]
    at60 = (runs.get("cache-open-60") or [{}])[-1]
    lines = []
    lines.append("# Benchmark results\n")
    lines.append("One run of `scripts/bench` on this machine (2 cores shared by the load generator, the "
                 "service, PostgreSQL and Redis): the release `reviews serve` on the full-size "
                 "generated data set (1,000,011 products, 31.2 M rows), product ids at random over "
                 "the whole range unless marked hot; closed loop: `wrk -t2 -c50` (JSON) and "
                 "`examples/bench_grpc.rs` with 64 calls in flight (gRPC), medians of 3 runs, "
                 "each figure's runs alternating with its limit's; open loop: `oha -q RATE "
                 "--latency-correction -c 50` (JSON) and `bench_grpc --rate` (gRPC). Each figure is "
                 "divided by a limit measured in the same run.\n")
    lines.append("| path | measured | limit (same run) | ratio | goal | holds |")
    lines.append("|---|---:|---|---:|---|---|")
    for r in rows:
        lines.append("| " + " | ".join(r) + " |")
    ok1k = (open1k.get("p99_ms") or 1e9) <= 5 and (open1k.get("p999_ms") or 1e9) <= 15 \
        and open1k.get("errors", 1) == 0
    lines.append(f"| open loop 1,000 req/s, JSON list, random ids, cache on, cold: p99 / p99.9 / errors "
                 f"| {fmt(open1k.get('p99_ms'), ' ms')} / {fmt(open1k.get('p999_ms'), ' ms')} / "
                 f"{open1k.get('errors')} | | | p99 ≤ 5 ms, p99.9 ≤ 15 ms, 0 errors | "
                 f"{'yes' if ok1k else '**no**'} |")
    rate60 = round((m("cache-list-random") or 0) * 0.6)
    ok60 = (at60.get("p99_ms") or 1e9) <= 20
    lines.append(f"| open loop at 60 % of the maximum ({rate60:,} req/s), JSON list, cache on: p99 "
                 f"| {fmt(at60.get('p99_ms'), ' ms')} | | | p99 ≤ 20 ms | {'yes' if ok60 else '**no**'} |")
    lines.append(f"| the Redis breaker with Redis healthy, every run | opened {trips} times | | | never opens "
                 f"| {'yes' if trips == 0 else '**no**'} |")
    lines.append("")
    lines.append("Other figures of the same run:\n")
    lines.append("| figure | value |")
    lines.append("|---|---:|")
    extra = [
        ("JSON meta, random ids, cache on (misses), req/s", fmt(m("cache-meta-random"))),
        ("gRPC ListReviews, random ids, no Redis / cache on, calls/s",
         f"{fmt(m('nocache-grpc-list'))} / {fmt(m('cache-grpc-list-random'))}"),
        ("open loop 1,000 req/s, JSON list, no Redis: p99 / p99.9",
         f"{fmt(one('nocache-open-1000', 'p99_ms'), ' ms')} / {fmt(one('nocache-open-1000', 'p999_ms'), ' ms')}"),
        ("open loop 1,000 calls/s, gRPC list, cache on: p99 / p99.9 / errors",
         f"{fmt(one('cache-grpc-open-1000', 'p99_ms'), ' ms')} / {fmt(one('cache-grpc-open-1000', 'p999_ms'), ' ms')}"
         f" / {one('cache-grpc-open-1000', 'errors')}"),
        ("open loop 1,000 req/s, JSON list, cache on: max latency / hypervisor steal / the "
         "server's major page faults during the run",
         f"{fmt(one('cache-open-1000', 'max_ms'), ' ms')} / {fmt(one('cache-open-1000', 'steal_ms'), ' ms')}"
         f" / {one('cache-open-1000', 'server_major_faults')}"),
        ("service CPU per JSON list request at 1,000 req/s, cache on",
         fmt(one("cache-open-1000-cpu", "cpu_ms_per_request"), " ms")),
        ("Redis alone: HMGET of a product hash (redis-benchmark -c 50), req/s", fmt(m("redis-hmget"))),
        ("full-size load (`reviews load`, 31.2 M rows), seconds", fmt(one("load", "seconds"))),
    ]
    for name, value in extra:
        lines.append(f"| {name} | {value} |")
    lines.append("")
    lines.append("Latency against offered rate (JSON list, random ids, cache on, open loop):\n")
    lines.append("| offered req/s | achieved | p50 | p99 | p99.9 | errors |")
    lines.append("|---:|---:|---:|---:|---:|---:|")
    points = []
    for pct in (20, 40, 60, 80, 100):
        r = (runs.get(f"cache-open-{pct}") or [None])[-1]
        if r:
            offered = round((m("cache-list-random") or 0) * pct / 100)
            points.append((offered, r))
            lines.append(f"| {offered:,} ({pct} %) | {fmt(r['rps'])} | {fmt(r['p50_ms'], ' ms')} | "
                         f"{fmt(r['p99_ms'], ' ms')} | {fmt(r['p999_ms'], ' ms')} | {r['errors']} |")
    lines.append("")
    lines.append("![latency percentiles against offered rate](latency.svg)\n")
    lines.extend(overload_table(runs, m("cache-list-random")))
    with open(f"{out}/README.md", "w") as f:
        f.write("\n".join(lines))
    with open(f"{out}/latency.svg", "w") as f:
        f.write(svg(points))


def overload_table(runs, capacity):
    """The overload runs (examples/bench_overload.rs): admitted and shed requests apart, RSS."""
    out = ["## Overload\n",
           "JSON list, random ids, cache on, HTTP/1.1 keep-alive connections opened before the clock "
           "starts; closed loop (each connection with one request in flight, waiting what "
           "`Retry-After` asks after a 503, as a well-behaved client does; once more ignoring it, "
           "a retry storm) at 2,000 and 6,000 connections, and an open loop at twice the "
           "closed-loop maximum above "
           f"({fmt(capacity)} req/s) over 2,000 connections. Admitted: 2xx; shed: 503 at once "
           "(the adaptive in-flight limit, `REVIEWS_MAX_IN_FLIGHT`, `REVIEWS_QUEUE_DELAY_TARGET`); "
           "failed: no answer. Shed after the opening burst: the refusals of requests sent after "
           "the run's first second, in which every connection sends at the same instant. RSS of "
           "the service at rest (just before), at its peak (sampled every 200 ms) and 30 s after "
           "the run.\n",
           "| run | admitted req/s (goodput / max) | admitted p50 / p99 / max | shed | shed p99 / max "
           "| shed after the opening burst: p99 / max "
           "| over 1 s | failed | RSS rest / peak / 30 s after (after / rest) | cache errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label in (("overload-2000", "2,000 connections, 20 s"),
                        ("overload-6000", "6,000 connections, 15 s"),
                        ("overload-6000-hammer", "6,000 connections ignoring Retry-After, 15 s"),
                        ("overload-open-2x", "open loop at 2× the maximum, 15 s")):
        r = (runs.get(name) or [None])[-1]
        if not r:
            continue
        if r.get("offered_rps"):
            label += f" ({fmt(round(r['offered_rps']))} req/s offered)"
        mb = lambda kb: f"{kb / 1024:.0f} MB"
        good = f" ({r['ok_rps'] / capacity:.2f}×)" if capacity else ""
        out.append(
            f"| {label} | {fmt(r['ok_rps'])}{good} | {fmt(r['ok_p50_ms'], ' ms')} / "
            f"{fmt(r['ok_p99_ms'], ' ms')} / {fmt(r['ok_max_ms'], ' ms')} | {r['shed']:,} | "
            f"{fmt(r['shed_p99_ms'], ' ms')} / {fmt(r['shed_max_ms'], ' ms')} | "
            f"{fmt(r.get('shed_steady_p99_ms', 0), ' ms')} / {fmt(r.get('shed_steady_max_ms', 0), ' ms')} | {r['over_1s']} | "
            f"{r['failed']} | {mb(r['rss_rest_kb'])} / {mb(r['rss_peak_kb'])} / {mb(r['rss_after_kb'])} "
            f"({r['rss_after_kb'] / r['rss_rest_kb']:.2f}×) | {r['cache_errors']} |")
    out.append("")
    return out


def svg(points):
    """p50, p99 and p99.9 (log scale) against offered rate, drawn by hand: no plotting library."""
    import math
    w, h, left, bottom, top, right = 640, 360, 70, 50, 30, 150
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"></svg>'
    xmax = max(p[0] for p in points) * 1.05
    lo, hi = 0.1, 1000.0
    x = lambda v: left + (w - left - right) * v / xmax
    y = lambda ms: top + (h - top - bottom) * (1 - (math.log10(max(ms, lo)) - math.log10(lo))
                                               / (math.log10(hi) - math.log10(lo)))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>']
    for ms in (0.1, 1, 10, 100, 1000):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y(ms):.1f}" y2="{y(ms):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 8}" y="{y(ms) + 4:.1f}" text-anchor="end">{ms:g} ms</text>')
    for offered, _ in points:
        out.append(f'<text x="{x(offered):.1f}" y="{h - bottom + 18}" text-anchor="middle">{offered:,}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 10}" text-anchor="middle">offered rate, req/s '
               f'(JSON list, random ids, cache on)</text>')
    for key, color, label in (("p50_ms", "#2a7", "p50"), ("p99_ms", "#e80", "p99"), ("p999_ms", "#c22", "p99.9")):
        pts = " ".join(f"{x(o):.1f},{y(r[key]):.1f}" for o, r in points)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        for o, r in points:
            out.append(f'<circle cx="{x(o):.1f}" cy="{y(r[key]):.1f}" r="3" fill="{color}"/>')
        ly = {"p50": 60, "p99": 80, "p99.9": 100}[label]
        out.append(f'<line x1="{w - right + 15}" x2="{w - right + 35}" y1="{ly}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2"/><text x="{w - right + 40}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)


def overload():
    """The overload table alone, of a `BENCH_ONLY=overload` run's results."""
    runs = load(sys.argv[2])
    print("\n".join(overload_table(runs, med(runs, "cache-list-random"))))


if __name__ == "__main__":
    {"oha": oha, "median": median, "report": report, "overload": overload}[sys.argv[1]]()
