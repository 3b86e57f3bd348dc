#!/usr/bin/env python3
"""The tables, targets and chart of bench.sh's run, from the files it left in its work dir.

    report.py text WORK                      aligned tables on stdout
    report.py markdown WORK RESULTS.md CHART.svg

Standard library only. WORK holds (tab-separated, written by bench.sh):
    plan.tsv        scenario, seconds, rounds, connections, path, targets
    runs.tsv        scenario, target, round, req/s, p50 us, p99 us, p99.9 us, requests, errors, CPU us
    unmeasured.tsv  scenario (or *), target, why it was not measured
    idle.tsv        target, "opened=N still_open=N rss_before_kib=N rss_after_kib=N"
    rss.tsv         target, pid, VmHWM KiB
    scale.tsv       proxy+workers (portico1, nginx2, ...), round, req/s, p99 us, requests, errors, CPU us
    pairs.tsv       pair, round, then req/s, requests, CPU us of the first side (Portico; for pgql,
                    pcompose; for pshared_mem, pcache) and of the second (the target the pair is
                    named after; for pshared_mem, pshared)
    meta.tsv        key, value (store_ticks:PAIR and store_calls:PAIR: Redis's CPU ticks and the
                    calls it ran in the windows of a pair that uses it);  commands.tsv  kind
                    (proxy | load), command
    checks.txt, warnings.txt
"""

import os
import statistics
import sys
from collections import defaultdict

LABELS = {
    "direct": "backend direct",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "bare": "bare Pingora",
    "portico": "Portico",
    "local": "Portico + rate_limit local",
    "redis": "Portico + rate_limit redis",
    "rcluster": "Portico + rate_limit on a Redis Cluster",
    "full": "Portico full chain",
    "policy": "Portico + cors + ip_filter",
    "split": "Portico + split 90/10",
    "trace001": "Portico + tracing at 0.01",
    "trace1": "Portico + tracing at 1.0",
    "ngxcache": "nginx proxy_cache",
    "pcache": "Portico cache",
    "pshared": "Portico cache, shared-tier hit",
    "ngxgzip": "nginx gzip level 1",
    "pgzip": "Portico compress gzip",
    "ngxtls": "nginx TLS",
    "ptls": "Portico TLS",
    "pcompose": "Portico composition /dashboard",
    "pgql": "Portico GraphQL dashboard",
}
PROXIES = ["nginx", "haproxy", "bare", "portico"]
TITLES = {
    "c64": "Plain proxy, 64 connections",
    "rate10k": "Fixed rate: 10,000 req/s",
    "c1": "Plain proxy, 1 connection",
    "c256": "Plain proxy, 256 connections",
    "bytes16k": "16 KiB responses, 64 connections",
    "gzip": "16 KiB JSON gzipped (level 1) for clients that ask, 64 connections",
    "newconn": "A new connection per request, 64 connections",
    "cache": "Cache hits, 64 connections",
    "tls": "TLS 1.3 keep-alive, 64 connections",
    "tlsnew": "A new TLS connection (full handshake) per request, 64 connections",
    "h2": "HTTP/2 over TLS, 1 connection x 64 streams",
}
# The targets, for the verdicts.
PER_CORE_VS_BARE = 1.25
P99_VS_NGINX = 1.5
FULL_VS_PLAIN = 0.85
# Traffic policy (issue 25): what cors + ip_filter and a split may add to a request's CPU.
POLICY_COST_MAX = 0.03
SPLIT_COST_MAX = 0.02
# Tracing (issue 24): spans exported over OTLP/HTTP, at sample_ratio 0.01 and 1.0.
TRACE_COST_MAX = {"trace001": 0.03, "trace1": 0.15}
# GraphQL: the seed's dashboard as a query, against the same three calls composed by a route.
GQL_VS_COMPOSE_MAX = 1.5
# A pair's first side: plain Portico, but for the GraphQL dashboard, whose is the composition,
# and for the shared-tier hit against a memory hit, whose is Portico's cache.
PAIR_WITH = {"pgql": "pcompose", "pshared_mem": "pcache"}
# A pair named otherwise than its second side: the shared-tier hit's second pair.
PAIR_TARGET = {"pshared_mem": "pshared"}
# Scale-out (issue "Scale-out: many instances on Redis Cluster or Sentinel, ..."): the rate limit
# counted in a Redis Cluster costs at most this much CPU per request over unlimited Portico (the
# bound of the single-server row); the shared-tier rows are reported, with no goal.
CLUSTER_COST_MAX = 0.15
IDLE_KIB_MAX = 20
RL_COST = {"local": 5.0, "redis": 15.0}
TLS_VS_PLAIN = 0.8
HANDSHAKES_VS_NGINX = 0.8
H2_VS_NGINX = 1.0


def read_tsv(work, name):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def read_lines(work, name):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def num(s):
    return None if s in ("-", "", None) else float(s)


class Run:
    """Everything bench.sh measured, with medians per scenario and target."""

    def __init__(self, work):
        self.work = work
        self.meta = dict(read_tsv(work, "meta.tsv"))
        self.quick = self.meta.get("quick") == "1"
        self.plan = {}
        self.order = []
        for sc, secs, rounds, conns, path, targets in read_tsv(work, "plan.tsv"):
            self.plan[sc] = dict(secs=secs, rounds=rounds, conns=conns, path=path, targets=targets.split())
            self.order.append(sc)
        self.runs = defaultdict(list)
        for sc, t, _rnd, rps, p50, p99, p999, req, err, cpu in read_tsv(work, "runs.tsv"):
            self.runs[sc, t].append(
                dict(rps=num(rps), p50=num(p50), p99=num(p99), p999=num(p999), req=int(req), err=int(err), cpu=num(cpu))
            )
        self.why = {}
        for sc, t, why in read_tsv(work, "unmeasured.tsv"):
            self.why[sc, t] = why
        # Same-window pairs: per target, one dict per round (Portico's side as "a", the target's as "b").
        self.pairs = defaultdict(list)
        for t, _rnd, a_rps, a_req, a_us, b_rps, b_req, b_us in read_tsv(work, "pairs.tsv"):
            self.pairs[t].append(dict(a_rps=num(a_rps), a_req=int(a_req), a_us=num(a_us),
                                      b_rps=num(b_rps), b_req=int(b_req), b_us=num(b_us)))
        self.idle = {}
        for t, fields in read_tsv(work, "idle.tsv"):
            self.idle[t] = {k: int(v) for k, v in (f.split("=") for f in fields.split())}
        self.rss = {t: int(kib) for t, _pid, kib in read_tsv(work, "rss.tsv")}
        self.commands = read_tsv(work, "commands.tsv")
        self.checks = read_lines(work, "checks.txt")
        self.warnings = read_lines(work, "warnings.txt")

    def not_measured(self, sc, t):
        """Why (sc, t) has no numbers, or None when it has."""
        if self.runs.get((sc, t)):
            return None
        return self.why.get(("*", t)) or self.why.get((sc, t)) or "no run completed"

    def median(self, sc, t, key):
        values = [r[key] for r in self.runs.get((sc, t), []) if r[key] is not None]
        return statistics.median(values) if values else None

    def spread(self, sc, t, key):
        """The lowest and the highest value over the rounds, as text: how far one round is
        from the next, which for a tail latency on a shared VM is often most of the story."""
        values = [r[key] for r in self.runs.get((sc, t), []) if r[key] is not None]
        return f"{fmt_lat(min(values))}–{fmt_lat(max(values))}" if values else "-"

    def cpu_us_per_req(self, sc, t):
        runs = self.runs.get((sc, t), [])
        requests = sum(r["req"] for r in runs)
        if not runs or runs[0]["cpu"] is None or requests == 0:
            return None
        return sum(r["cpu"] for r in runs) / requests

    def per_core(self, sc, t):
        """Requests per second of CPU the proxy used: req/s per core, even when not saturated."""
        cpu = self.cpu_us_per_req(sc, t)
        return 1e6 / cpu if cpu else None

    def pair_cpu(self, t, side):
        """CPU µs per request over all of a pair's rounds: Portico's side ("a") or t's ("b")."""
        rounds = self.pairs.get(t, [])
        requests = sum(r[side + "_req"] for r in rounds)
        if not rounds or requests == 0:
            return None
        return sum(r[side + "_us"] for r in rounds) / requests

    def pair_ratio(self, t):
        """t's requests per second per core relative to Portico's, from the same windows: the
        median over rounds of Portico's CPU per request / t's."""
        values = [(r["a_us"] / r["a_req"]) / (r["b_us"] / r["b_req"])
                  for r in self.pairs.get(t, []) if r["a_req"] and r["b_req"] and r["b_us"]]
        return statistics.median(values) if values else None

    def pair_not_measured(self, t):
        if self.pairs.get(t):
            return None
        return (self.why.get(("*", PAIR_TARGET.get(t, t))) or self.why.get(("*", PAIR_WITH.get(t, "portico")))
                or "no pair round completed")


# --- formatting ----------------------------------------------------------------------------------


def fmt_int(v):
    return "-" if v is None else f"{v:,.0f}"


def fmt_lat(us):
    if us is None:
        return "-"
    return f"{us / 1000:.2f}ms" if us >= 1000 else f"{us:.0f}us"


def fmt_cpu(v):
    return "n/a" if v is None else f"{v:.2f}"


def ratio(a, b):
    return None if a is None or not b else a / b


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def fmt_pct(r):
    return "-" if r is None else f"{100 * r:.1f}%"


class Table:
    """Rows of cells, or "gap" rows (a label and why it has no numbers), as text or Markdown.
    Numeric tables right-align every column but the first; text tables left-align them all."""

    def __init__(self, title, header, note="", numeric=True):
        self.title, self.header, self.note, self.numeric, self.rows = title, header, note, numeric, []

    def row(self, *cells):
        self.rows.append((False, [str(c) for c in cells]))

    def gap(self, label, why):
        self.rows.append((True, [label, f"not measured: {why}"]))

    def text(self):
        widths = [len(h) for h in self.header]
        for is_gap, r in self.rows:
            cells = r[:1] + [""] * (len(widths) - 1) if is_gap else r
            widths = [max(w, len(c)) for w, c in zip(widths, cells)]
        right = lambda i: self.numeric and i > 0
        fmt = lambda r: "  ".join(c.rjust(w) if right(i) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        out = [self.title, fmt(self.header).rstrip()]
        for is_gap, r in self.rows:
            out.append(f"{r[0].ljust(widths[0])}  {r[1]}" if is_gap else fmt(r).rstrip())
        if self.note:
            out.append(f"({self.note})")
        return "\n".join(out)

    def markdown(self):
        out = [f"### {self.title}", ""]
        out.append("| " + " | ".join(self.header) + " |")
        out.append("|" + "|".join("---:" if self.numeric and i > 0 else "---" for i in range(len(self.header))) + "|")
        for is_gap, r in self.rows:
            if is_gap:
                out.append(f"| {r[0]} | {r[1]} |" + "|" * (len(self.header) - 2))
            else:
                out.append("| " + " | ".join(c[:-2] + "µs" if c.endswith("us") and c[:-2].isdigit() else c for c in r) + " |")
        if self.note:
            out += ["", self.note.rstrip(".") + "."]
        return "\n".join(out)


def load_line(run, sc):
    p = run.plan[sc]
    tool = {"rate10k": f"oha -q {run.meta.get('rate', '10000')} --latency-correction", "h2": "h2load -t1"}.get(sc, "wrk -t1")
    extra = {"newconn": ", Connection: close", "tlsnew": ", Connection: close (wrk never resumes a TLS session)",
             "h2": " -m64 (h2load gives no percentiles)", "gzip": ", Accept-Encoding: gzip",
             "tls": " (Portico: plain HTTP on its own listener, for the TLS cost)"}.get(sc, "")
    return f"GET {p['path']}, {tool} -c{p['conns']}{extra}, {p['rounds']} round(s) of {p['secs']} s interleaved, medians"


def scenario_tables(run):
    tables = []
    cpu_note = "CPU µs/req: the proxy's utime+stime (all threads and child processes) over its own runs / requests it served"
    for sc in run.order:
        targets = run.plan[sc]["targets"]
        if sc == "c64":
            targets = [t for t in targets if t in ("direct",) + tuple(PROXIES)]
        base = {"cache": "ngxcache", "gzip": "ngxgzip", "tls": "ngxtls", "tlsnew": "ngxtls", "h2": "ngxtls"}.get(sc, "nginx")
        base_rps = run.median(sc, base, "rps")
        if sc == "rate10k":
            t = Table(
                TITLES[sc],
                ["target", "achieved req/s", "p50", "p99", "p99 per round", "p99.9", "CPU µs/req",
                 "p99 vs nginx"],
                f"{load_line(run, sc)}. {cpu_note}; latency corrected for coordinated omission",
            )
            base_p99 = run.median(sc, "nginx", "p99")
            for tg in targets:
                why = run.not_measured(sc, tg)
                if why:
                    t.gap(LABELS[tg], why)
                    continue
                p99 = run.median(sc, tg, "p99")
                t.row(LABELS[tg], fmt_int(run.median(sc, tg, "rps")), fmt_lat(run.median(sc, tg, "p50")),
                      fmt_lat(p99), run.spread(sc, tg, "p99"), fmt_lat(run.median(sc, tg, "p999")),
                      fmt_cpu(run.cpu_us_per_req(sc, tg)),
                      fmt_ratio(ratio(p99, base_p99)))
            tables.append(t)
            continue
        vs = {"cache": "vs nginx proxy_cache", "gzip": "vs nginx gzip", "tls": "vs nginx TLS", "tlsnew": "vs nginx TLS",
              "h2": "vs nginx TLS"}.get(sc, "vs nginx")
        t = Table(TITLES[sc], ["target", "req/s", "p50", "p99", "CPU µs/req", "req/s per core", vs],
                  f"{load_line(run, sc)}. {cpu_note}; req/s per core = 1e6 / CPU µs per request")
        for tg in targets:
            why = run.not_measured(sc, tg)
            if why:
                t.gap(LABELS[tg], why)
                continue
            rps = run.median(sc, tg, "rps")
            t.row(LABELS[tg], fmt_int(rps), fmt_lat(run.median(sc, tg, "p50")), fmt_lat(run.median(sc, tg, "p99")),
                  "-" if tg == "direct" else fmt_cpu(run.cpu_us_per_req(sc, tg)), fmt_int(run.per_core(sc, tg)),
                  "-" if tg == "direct" else fmt_ratio(ratio(rps, base_rps)))
        tables.append(t)
        if sc == "c64":
            tables.append(pairs_table(run))
    tables.append(idle_table(run))
    tables.append(memory_table(run))
    return tables


def pairs_table(run):
    secs, rounds = run.meta.get("pair_secs", "4"), run.meta.get("pair_rounds", "3")
    t = Table(
        "Same window: Portico and one other at once, 32 connections each",
        ["target", "its req/s", "its CPU µs/req", "Portico's req/s", "Portico's CPU µs/req", "req/s per core vs Portico"],
        f"each pair: Portico and the target both pinned to the proxy core, each loaded by its own `wrk -t1 -c32 "
        f"-d{secs}s` on the load core at the same time; {rounds} round(s), pairs interleaved; CPU µs/req over all "
        "rounds, the last column the median over rounds of Portico's CPU per request / the target's. "
        f"rate_limit: {run.meta.get('rl', '')}; full chain: jwt HS256 (one token, so after the first request "
        "a verification-cache hit) + that local rate limit + metrics + a JSON access log to a file; cors + ip_filter: "
        "every request with an allowed Origin, the client in the allow-list; split: 90/10 between two upstreams "
        "(the same backend), keyed by client address; tracing: `[tracing]` at sample_ratio 0.01 and 1.0, every "
        "sampled request a server and a client span, exported by the batch processor over OTLP/HTTP protobuf "
        "to the backend (its CPU counts in Portico's)"
        + "".join(f". {note}" for note in store_notes(run))
        + ". GraphQL dashboard: its \"Portico\" is Portico's composition route `GET /dashboard/42` (user, orders "
        "and recommendations, three calls at once to the backend, merged), against the same dashboard as a GraphQL "
        "`GET /graphql?query=...` selecting every field the composition answers (user and recentOrders at once, "
        "then recommendations as a POST of the orders). Redis Cluster: the same rate limit as redis, counted in a "
        "Redis Cluster of three primaries (`[redis] cluster`, the three as seeds). Shared-tier hit: Portico's "
        "cache with `[cache] shared = \"redis\"` and a memory tier too small to keep any answer, so every GET / "
        "is a memory miss and a Redis GET that hits; paired with plain Portico (its GET / an upstream fetch) and, in "
        "windows of their own, with Portico's cache (a memory hit; its \"Portico\" is then that one)",
    )
    for tg in PAIR_ROWS:
        label = PAIR_LABELS.get(tg, LABELS.get(tg, tg))
        why = run.pair_not_measured(tg)
        if why:
            t.gap(label, why)
            continue
        med = lambda k: statistics.median(r[k] for r in run.pairs[tg])
        t.row(label, fmt_int(med("b_rps")), fmt_cpu(run.pair_cpu(tg, "b")), fmt_int(med("a_rps")),
              fmt_cpu(run.pair_cpu(tg, "a")), fmt_pct(run.pair_ratio(tg)))
    return t


def idle_kib_per_conn(run, tg):
    i = run.idle.get(tg)
    if not i or not i.get("opened"):
        return None
    return (i["rss_after_kib"] - i["rss_before_kib"]) / i["opened"]


def idle_table(run):
    n = int(run.meta.get("idle_conns", "1000"))
    t = Table(
        f"{n:,} idle keep-alive connections",
        ["target", "still open", "RSS before", "RSS after", "KiB per connection", "vs nginx"],
        f"each connection carried one GET / (one at a time, so one upstream connection served them all); "
        "RSS of the proxy (nginx: its worker; from /proc/PID/smaps_rollup) before the first and after the last",
    )
    base = idle_kib_per_conn(run, "nginx")
    for tg in PROXIES:
        i = run.idle.get(tg)
        if not i:
            t.gap(LABELS[tg], run.why.get(("*", tg), "the idle test failed (see the warnings)"))
            continue
        per = idle_kib_per_conn(run, tg)
        t.row(LABELS[tg], f"{i['still_open']}/{i['opened']}", f"{i['rss_before_kib'] / 1024:.1f} MiB",
              f"{i['rss_after_kib'] / 1024:.1f} MiB", f"{per:.1f}", fmt_ratio(ratio(per, base)))
    return t


def memory_table(run):
    t = Table("Peak memory", ["target", "peak RSS (VmHWM)"],
              "at the end of the run: the most each process held at any time, the idle connections "
              "included; nginx: its worker process")
    for tg in LABELS:
        if tg == "direct":
            continue
        if tg in run.rss:
            t.row(LABELS[tg], f"{run.rss[tg] / 1024:.1f} MiB")
        else:
            t.gap(LABELS[tg], run.why.get(("*", tg), "-"))
    return t


# --- targets -------------------------------------------------------------------------------------


def verdict(run, ok):
    if ok is None:
        return "unknown"
    v = "met" if ok else "NOT met"
    return v + " (a --quick run decides nothing)" if run.quick else v


def targets_table(run):
    t = Table("Targets", ["target", "goal", "measured", "verdict"], numeric=False)
    sc = "c64"
    p_core, b_core = run.per_core(sc, "portico"), run.per_core(sc, "bare")
    p_rps, b_rps, n_rps = (run.median(sc, x, "rps") for x in ("portico", "bare", "nginx"))
    same = run.pair_ratio("bare")
    r = ratio(1.0, same)
    sequential = (f"sequential rounds: {fmt_ratio(ratio(p_core, b_core))} per core ({fmt_int(p_core)} vs {fmt_int(b_core)}), "
                  f"req/s {fmt_ratio(ratio(p_rps, b_rps))}; vs nginx {fmt_ratio(ratio(p_rps, n_rps))} req/s, "
                  f"{fmt_ratio(ratio(p_core, run.per_core(sc, 'nginx')))} per core")
    t.row("plain proxy, 64 connections", f"Portico >= {PER_CORE_VS_BARE}x bare Pingora req/s per core",
          f"{fmt_ratio(r)} per core in the same windows ({fmt_cpu(run.pair_cpu('bare', 'a'))} vs "
          f"{fmt_cpu(run.pair_cpu('bare', 'b'))} CPU µs/req); {sequential}"
          if r else "not measured: " + (run.pair_not_measured("bare") or "no CPU time"),
          verdict(run, None if r is None else r >= PER_CORE_VS_BARE))
    p99, n99 = run.median("rate10k", "portico", "p99"), run.median("rate10k", "nginx", "p99")
    r = ratio(p99, n99)
    t.row("fixed 10k req/s", f"Portico p99 <= {P99_VS_NGINX}x nginx's",
          f"{fmt_ratio(r)} ({fmt_lat(p99)} vs {fmt_lat(n99)}, medians; per round "
          f"{run.spread('rate10k', 'portico', 'p99')} vs {run.spread('rate10k', 'nginx', 'p99')})" if r else
          "not measured: " + (run.not_measured("rate10k", "portico") or run.not_measured("rate10k", "nginx") or "-"),
          verdict(run, None if r is None else r <= P99_VS_NGINX))
    r = run.pair_ratio("full")
    t.row("full chain, 64 connections", f">= {FULL_VS_PLAIN:.0%} of Portico's plain req/s",
          f"{fmt_pct(r)} per core in the same windows ({fmt_cpu(run.pair_cpu('full', 'b'))} vs "
          f"{fmt_cpu(run.pair_cpu('full', 'a'))} CPU µs/req)" if r else
          "not measured: " + (run.pair_not_measured("full") or "-"),
          verdict(run, None if r is None else r >= FULL_VS_PLAIN))
    for tg, label, most in [("policy", "cors + ip_filter", POLICY_COST_MAX), ("split", "split 90/10", SPLIT_COST_MAX),
                            ("trace001", "tracing at sample_ratio 0.01", TRACE_COST_MAX["trace001"]),
                            ("trace1", "tracing at sample_ratio 1.0", TRACE_COST_MAX["trace1"])]:
        r = run.pair_ratio(tg)
        cost = None if r is None else 1 / r - 1
        t.row(f"{label}, 64 connections", f"costs at most {most:.0%} CPU per request over plain Portico",
              f"{cost:+.1%} CPU per request in the same windows ({fmt_cpu(run.pair_cpu(tg, 'b'))} vs "
              f"{fmt_cpu(run.pair_cpu(tg, 'a'))} CPU µs/req)" if r else
              "not measured: " + (run.pair_not_measured(tg) or "-"),
              verdict(run, None if cost is None else cost <= most))
    r = run.pair_ratio("pgql")
    times = None if r is None else 1 / r
    t.row("GraphQL dashboard vs the same composition, 64 connections",
          f"costs at most {GQL_VS_COMPOSE_MAX}x the composition's CPU per request",
          f"{fmt_ratio(times)} CPU per request in the same windows ({fmt_cpu(run.pair_cpu('pgql', 'b'))} vs "
          f"{fmt_cpu(run.pair_cpu('pgql', 'a'))} CPU µs/req)" if r else
          "not measured: " + (run.pair_not_measured("pgql") or "-"),
          verdict(run, None if times is None else times <= GQL_VS_COMPOSE_MAX))
    per = idle_kib_per_conn(run, "portico")
    t.row("idle keep-alive connections", f"Portico < {IDLE_KIB_MAX} KiB RSS each",
          f"{per:.1f} KiB each" if per is not None else
          "not measured: " + run.why.get(("*", "portico"), "the idle test failed (see the warnings)"),
          verdict(run, None if per is None else per < IDLE_KIB_MAX))
    pc, nc = run.median("cache", "pcache", "rps"), run.median("cache", "ngxcache", "rps")
    r = ratio(pc, nc)
    t.row("cache hits, 64 connections", "Portico cache >= nginx proxy_cache req/s",
          f"{fmt_ratio(r)} ({fmt_int(pc)} vs {fmt_int(nc)})" if r else
          "not measured: " + (run.not_measured("cache", "pcache") or run.not_measured("cache", "ngxcache") or "-"),
          verdict(run, None if r is None else r >= 1.0))
    tls_rows(run, t)
    return t


def tls_rows(run, t):
    """The TLS and HTTP/2 goals: TLS costs only the TLS, handshakes as cheap as nginx's, and
    HTTP/2 at least as fast per core as nginx's."""
    pt, pp = run.median("tls", "ptls", "rps"), run.median("tls", "portico", "rps")
    r = ratio(pt, pp)
    t.row("TLS 1.3 keep-alive, 64 connections", f"Portico TLS >= {TLS_VS_PLAIN:.0%} of Portico plain req/s",
          f"{fmt_pct(r)} ({fmt_int(pt)} vs {fmt_int(pp)}; per core {fmt_int(run.per_core('tls', 'ptls'))} vs "
          f"{fmt_int(run.per_core('tls', 'portico'))}); nginx TLS {fmt_int(run.median('tls', 'ngxtls', 'rps'))}" if r else
          "not measured: " + (run.not_measured("tls", "ptls") or run.not_measured("tls", "portico") or "-"),
          verdict(run, None if r is None else r >= TLS_VS_PLAIN))
    pn, nn = run.median("tlsnew", "ptls", "rps"), run.median("tlsnew", "ngxtls", "rps")
    r, per = ratio(pn, nn), ratio(run.per_core("tlsnew", "ptls"), run.per_core("tlsnew", "ngxtls"))
    t.row("a new TLS connection per request", f"Portico >= {HANDSHAKES_VS_NGINX}x nginx's handshakes/s",
          f"{fmt_ratio(r)} ({fmt_int(pn)} vs {fmt_int(nn)}); per core {fmt_ratio(per)} "
          f"({fmt_int(run.per_core('tlsnew', 'ptls'))} vs {fmt_int(run.per_core('tlsnew', 'ngxtls'))})" if r else
          "not measured: " + (run.not_measured("tlsnew", "ptls") or run.not_measured("tlsnew", "ngxtls") or "-"),
          verdict(run, None if r is None else r >= HANDSHAKES_VS_NGINX))
    ph, nh = run.per_core("h2", "ptls"), run.per_core("h2", "ngxtls")
    r = ratio(ph, nh)
    t.row("HTTP/2, 64 streams on one connection", f"Portico >= {H2_VS_NGINX}x nginx's req/s per core",
          f"{fmt_ratio(r)} per core ({fmt_int(ph)} vs {fmt_int(nh)}); req/s {fmt_int(run.median('h2', 'ptls', 'rps'))} "
          f"vs {fmt_int(run.median('h2', 'ngxtls', 'rps'))}" if r else
          "not measured: " + (run.not_measured("h2", "ptls") or run.not_measured("h2", "ngxtls") or "-"),
          verdict(run, None if r is None else r >= H2_VS_NGINX))


# The same-window table's rows, in order, and the labels of those that are not a target's.
PAIR_ROWS = ["bare", "local", "redis", "rcluster", "full", "policy", "split", "trace001", "trace1", "pgql",
             "pshared", "pshared_mem"]
PAIR_LABELS = {
    "pgql": LABELS["pgql"] + " (vs the composition)",
    "pshared": LABELS["pshared"] + " (vs an upstream fetch)",
    "pshared_mem": LABELS["pshared"] + " (vs a memory hit: Portico cache)",
}


def scale_out_table(run):
    """The rate limit on a Redis Cluster against unlimited Portico (goal), and a shared-tier hit
    against a memory hit and against an upstream fetch (reported), from their same-window pairs."""
    t = Table(
        "Scale-out: a rate limit on a Redis Cluster, the shared cache tier",
        ["scenario", "against, in the same windows", "its req/s", "its CPU µs/req", "the other's req/s",
         "the other's CPU µs/req", "its CPU per request vs the other's", "goal", "verdict"],
        "each row a same-window pair of its own (the \"Same window\" table; medians of req/s over rounds, CPU µs/req "
        "over all rounds, the ratio the median over rounds). Redis Cluster: three primaries started for the run "
        "(`[redis] cluster` with the three as seeds), the rate limit of the redis row; the CPU form of the "
        "single-server row's bound (15% more CPU per request is 13% less throughput per core). Shared-tier hit: "
        "Portico's cache with `[cache] shared = \"redis\"` and a `max_size` smaller than one entry, so the memory "
        "tier never keeps the answer and every GET / is a memory miss, a Redis GET and a hit; against Portico's "
        "cache answering from memory and against plain Portico fetching from the backend, each pair in windows of "
        "its own, all three answering GET / with the same body (see Checks)",
        numeric=False,
    )
    rows = [("rcluster", "Portico, no rate limit", CLUSTER_COST_MAX),
            ("pshared_mem", "a memory hit (Portico cache)", None),
            ("pshared", "an upstream fetch (Portico, no cache)", None)]
    for pair, against, most in rows:
        label = {"rcluster": "rate limit counted in a Redis Cluster of 3 primaries",
                 "pshared_mem": "shared-tier hit (memory miss, a Redis GET)",
                 "pshared": "shared-tier hit (memory miss, a Redis GET)"}[pair]
        goal = f"costs at most {most:.0%} CPU per request over unlimited" if most is not None else "none (reported)"
        why = run.pair_not_measured(pair)
        if why:
            t.row(label, against, "-", "-", "-", "-", "not measured: " + why, goal,
                  "unknown" if most is not None else "-")
            continue
        r = run.pair_ratio(pair)
        times = None if not r else 1 / r
        med = lambda k: statistics.median(x[k] for x in run.pairs[pair])
        vs = "-" if times is None else f"{times:.2f}x ({times - 1:+.1%})"
        if most is not None:
            v = verdict(run, None if times is None else times - 1 <= most)
            if times is not None:
                vs += f"; throughput per core {r - 1:+.1%}"
        else:
            v = "reported (--quick: noisy)" if run.quick else "reported"
        t.row(label, against, fmt_int(med("b_rps")), fmt_cpu(run.pair_cpu(pair, "b")), fmt_int(med("a_rps")),
              fmt_cpu(run.pair_cpu(pair, "a")), vs, goal, v)
    return t


def rate_limit_table(run):
    t = Table('Targets (issue "rate limiting speed")', ["scenario", "target", "measured", "verdict"],
              "relative to the same route without a rate limit, per core, Portico and the limited "
              "Portico serving in the same windows (the \"Same window\" table)",
              numeric=False)
    for tg in ["local", "redis"]:
        r = run.pair_ratio(tg)
        measured = (f"costs {100 - 100 * r:.1f}% ({fmt_cpu(run.pair_cpu(tg, 'b'))} vs "
                    f"{fmt_cpu(run.pair_cpu(tg, 'a'))} CPU µs/req)" if r else
                    "not measured: " + (run.pair_not_measured(tg) or "-"))
        t.row(LABELS[tg], f"costs <= {RL_COST[tg]:.0f}% of unlimited throughput", measured,
              verdict(run, None if r is None else 100 - 100 * r <= RL_COST[tg]))
    return t


def store_note(run, pairs, who, calls_are):
    """What Redis did for the second sides of these pairs, over their windows: its CPU per
    request and the calls it ran (from meta store_ticks:PAIR and store_calls:PAIR)."""
    rounds = [r for p in pairs for r in run.pairs.get(p, [])]
    n = sum(r["b_req"] for r in rounds)
    if not n:
        return ""
    hz = int(run.meta.get("clk_tck", 100))
    ticks = sum(int(run.meta.get(f"store_ticks:{p}", 0)) for p in pairs)
    calls = sum(int(run.meta.get(f"store_calls:{p}", 0)) for p in pairs)
    if ticks > 0:
        cpu = f"{ticks / hz * 1e6 / n:.2f} µs"
    else:
        cpu = f"under {1e6 / hz / n:.2f} µs (less than one clock tick in all)"
    if not calls:
        trips = f"no {calls_are} counted"
    elif calls >= n:
        trips = f"{calls} {calls_are} for {n} requests, {calls / n:.2f} per request"
    else:
        trips = f"{calls} {calls_are} for {n} requests, one round trip per {n / calls:.0f} requests"
    return f"{who} (on the load core, not in the tables): {cpu} CPU per request; {trips}"


def store_notes(run):
    notes = [store_note(run, ["redis"], "redis-server", "script calls"),
             store_note(run, ["rcluster"], "Redis Cluster: its three redis-servers", "script calls"),
             store_note(run, ["pshared", "pshared_mem"], "Shared-tier hit: redis-server", "GETs")]
    return [n for n in notes if n]


# --- the chart -----------------------------------------------------------------------------------


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_chart(run):
    """Two bar panels: req/s at 64 connections, and p99 at the fixed rate (or at 64 connections)."""
    c64 = [t for t in ["nginx", "haproxy", "bare", "portico", "full"] if run.median("c64", t, "rps")]
    panels = [("Requests/s, GET / at 64 connections (higher is better)",
               [(LABELS[t], run.median("c64", t, "rps")) for t in c64], fmt_int)]
    fixed = [t for t in PROXIES if run.median("rate10k", t, "p99")]
    if fixed:
        panels.append((f"p99 latency at a fixed {int(run.meta.get('rate', 10000)):,} req/s (lower is better)",
                       [(LABELS[t], run.median("rate10k", t, "p99")) for t in fixed], fmt_lat))
    else:
        panels.append(("p99 latency at 64 connections (lower is better; the fixed-rate run is missing)",
                       [(LABELS[t], run.median("c64", t, "p99")) for t in c64], fmt_lat))
    colours = {"nginx": "#009639", "HAProxy": "#1f6fb5", "bare Pingora": "#f4a000", "Portico": "#c2185b",
               "Portico full chain": "#e57399"}
    width, label_w, bar_h, gap, value_w = 760, 150, 22, 6, 90
    y = 50
    parts = []
    for title, bars, fmt in panels:
        parts.append(f'<text x="10" y="{y}" font-size="15" font-weight="bold">{esc(title)}</text>')
        y += 14
        top = max((v for _, v in bars), default=0) or 1
        for label, value in bars:
            w = (width - label_w - value_w - 20) * value / top
            parts.append(f'<text x="{label_w - 8}" y="{y + bar_h - 6}" text-anchor="end" font-size="13">{esc(label)}</text>')
            parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colours.get(label, "#777")}"/>')
            parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h - 6}" font-size="13">{esc(fmt(value))}</text>')
            y += bar_h + gap
        y += 34
    head = f"Portico vs nginx, HAProxy and bare Pingora — {run.meta.get('date', '')}"
    if run.quick:
        head += " (--quick: noisy)"
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" viewBox="0 0 {width} {y}" '
        'font-family="sans-serif">',
        f'<rect width="{width}" height="{y}" fill="white"/>',
        f'<text x="10" y="24" font-size="17">{esc(head)}</text>',
        *parts,
        "</svg>",
        "",
    ])


def labelled(line):
    """bench.sh starts its checks and warnings with a target's id ("pcache: ..."); name it."""
    head, sep, rest = line.partition(":")
    return f"{LABELS[head]}{sep}{rest}" if head in LABELS else line


# --- output --------------------------------------------------------------------------------------


def scale_table(run):
    """Requests/s with one worker and with two, per proxy, from scale.tsv (medians)."""
    rows = read_tsv(run.work, "scale.tsv")
    t = Table("Scaling from one worker to two (scale)",
              ["proxy", "1 worker req/s", "2 workers req/s", "scaling", "1 worker CPU/req", "2 workers CPU/req"],
              note="both CPUs, shared with the load generator (wrk -t2 -c128): on a 2-CPU machine a floor "
                   "for what a second worker adds, not a ceiling")
    if not rows:
        t.gap("all", "this run had fewer than 2 CPUs, no gateway build, or no nginx")
        return t

    def med(name, col):
        vals = [num(r[col]) for r in rows if r[0] == name and num(r[col]) is not None]
        return statistics.median(vals) if vals else None

    for proxy, label in (("portico", "Portico"), ("nginx", "nginx")):
        one, two = med(proxy + "1", 2), med(proxy + "2", 2)
        cpu = []
        for n in ("1", "2"):
            us = [num(r[6]) / num(r[4]) for r in rows if r[0] == proxy + n and num(r[4])]
            cpu.append(fmt_cpu(statistics.median(us)) if us else "-")
        t.row(label, fmt_int(one), fmt_int(two), fmt_ratio(ratio(two, one)), cpu[0], cpu[1])
    return t


def text_report(run):
    out = []
    for t in scenario_tables(run):
        out += ["", t.text()]
    out += ["", scale_table(run).text()]
    out += ["", targets_table(run).text(), "", rate_limit_table(run).text(), "", scale_out_table(run).text()]
    if run.checks:
        out += ["", "Checks:"] + ["  " + labelled(c) for c in run.checks]
    if run.warnings:
        out += ["", "WARNINGS (the numbers above may be meaningless):"] + ["  " + labelled(w) for w in run.warnings]
    return "\n".join(out).replace("µs", "us") + "\n"


def markdown_report(run, chart_name):
    m = run.meta
    pinned = ("Every proxy (one worker) is pinned to CPU 0; portico-backend, redis-server and the load "
              "generators share CPU 1." if m.get("pinned") == "1" else
              "Not pinned (fewer than 2 CPUs or no taskset): the numbers are noisy.")
    out = [
        "# Benchmark results",
        "",
        "Written by [`bench.sh`](bench.sh) from its last run; run it again to replace this file and",
        f"[`{chart_name}`]({chart_name}) (`--no-write` leaves them alone). What is measured and how is described at",
        "the top of the script; the proxies' configs are in [`peers/`](peers/).",
        "",
        f"- **Date:** {m.get('date')}",
        f"- **Command:** `{m.get('command')}` (at commit `{m.get('commit')}`); it took {m.get('build_seconds')} s to "
        f"build and {m.get('measure_seconds')} s to measure",
        f"- **Machine:** {m.get('cpus')} CPUs (`nproc`), {m.get('cpu_model') or 'unknown CPU model'}, "
        f"{m.get('memory')}, {m.get('kernel')}; load average {m.get('loadavg')} (1, 5, 15 min) when measuring began",
        f"- **Software:** {m.get('versions')}",
        f"- **Pinning:** {pinned}",
    ]
    if run.quick:
        out += ["", "**This was a `--quick` run** (one 1-second round per scenario): it shows the script works, "
                "not how the proxies compare. Run `bash loadtest/bench.sh` for numbers to compare."]
    out += ["", f"![Requests/s and p99 per proxy]({chart_name})", "", "## Targets", "",
            "Ratios from the same machine and the same run.", "", targets_table(run).markdown().split("\n", 2)[2]]
    out += ["", '## Targets (issue "rate limiting speed")', "", rate_limit_table(run).markdown().split("\n", 2)[2]]
    out += ["", "## Scale-out: a rate limit on a Redis Cluster, the shared cache tier", "",
            "The rate limit counted in a Redis Cluster against the same route unlimited, with its goal; a "
            "shared-tier hit (the memory tier missed, Redis answered) against a memory hit and against an "
            "upstream fetch, reported. A same-window pair has one partner, so the shared-tier hit is measured in "
            "two pairs, each with windows of its own.", "",
            scale_out_table(run).markdown().split("\n", 2)[2]]
    out += ["", "## Results", ""]
    for t in scenario_tables(run):
        out += [t.markdown(), ""]
    out += [scale_table(run).markdown(), ""]
    out += ["## Commands", "", "```"]
    out += [cmd for kind, cmd in run.commands if kind == "proxy"]
    out += [""] + [cmd for kind, cmd in run.commands if kind == "load"]
    out += ["```", "", "`PORT` is a free port from the kernel, different per proxy; `BACKEND` is portico-backend's address; "
            "`WORK` is the run's temporary directory."]
    if run.checks:
        out += ["", "## Checks", ""] + ["- " + labelled(c) for c in run.checks]
    if run.warnings:
        out += ["", "## Warnings", "", "The numbers above may be meaningless:", ""] + ["- " + labelled(w) for w in run.warnings]
    return "\n".join(out) + "\n"


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "text":
        sys.stdout.write(text_report(Run(args[1])))
    elif len(args) == 4 and args[0] == "markdown":
        run = Run(args[1])
        write(args[3], svg_chart(run))
        write(args[2], markdown_report(run, os.path.relpath(args[3], os.path.dirname(os.path.abspath(args[2])))))
    else:
        sys.exit(__doc__.strip().splitlines()[2].strip() + "\n" + __doc__.strip().splitlines()[3].strip())


if __name__ == "__main__":
    main()
