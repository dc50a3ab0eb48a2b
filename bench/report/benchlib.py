"""Reads bench/results/latest.json and turns it into the load table
`Metric | Target | Actual | vs ws | vs uWS` with a verdict per row.

Shared by scripts/run-bench (summary at the end of a run) and
bench/report/generate.py (the validation report). Standard library only.
Every value comes from a measured run; a run that failed or was skipped
gives "not measured", never a number.
"""
from __future__ import annotations

import re
from typing import Any, Optional

PASS, FAIL, NOT_MEASURED, INFO = "pass", "FAIL", "not measured", "info"
ONE_CORE = "synapse-1t"
BASELINE = "ws"
UWS = "uws"
ALL_CORES = "synapse-mt"


def results(latest: dict) -> dict:
    """(label, scenario) -> the scenario's `result` object, or None if the run failed."""
    out: dict = {}
    for run in latest.get("runs", []):
        res = run.get("result") or {}
        inner = res.get("result")
        ok = run.get("exit_code") == 0 and isinstance(inner, dict) and "error" not in inner
        out[(run["label"], run["scenario"])] = inner if ok else None
    return out


def run_record(latest: dict, label: str, scenario: str) -> Optional[dict]:
    for run in latest.get("runs", []):
        if run["label"] == label and run["scenario"] == scenario:
            return run
    return None


# ---------------------------------------------------------------- accessors

def _conn_entry(r: dict, label: str, n: Optional[int] = None) -> Optional[dict]:
    res = r.get((label, "connection_load"))
    if not res:
        return None
    sizes = res.get("sizes") or []
    if not sizes:
        return None
    if n is None:
        return max(sizes, key=lambda s: s.get("connections", 0))
    for s in sizes:
        if s.get("connections") == n:
            return s
    return None


def _phases(r: dict, label: str, kind: str, scenario: str = "message_throughput") -> list:
    res = r.get((label, scenario))
    if not res:
        return []
    return sorted([p for p in res.get("phases", []) if p.get("kind") == kind],
                  key=lambda p: p.get("subscribers", 0))


def _phase(r: dict, label: str, kind: str, which: str = "min", subs: Optional[int] = None,
           scenario: str = "message_throughput") -> Optional[dict]:
    ps = _phases(r, label, kind, scenario)
    if subs is not None:
        ps = [p for p in ps if p.get("subscribers") == subs]
    if not ps:
        return None
    return ps[0] if which == "min" else ps[-1]


def _latency(r: dict, label: str, kind: str, which: str = "min") -> Optional[dict]:
    res = r.get((label, "latency"))
    if not res:
        return None
    runs = sorted([x for x in res.get("runs", []) if x.get("kind") == kind],
                  key=lambda x: x.get("idle_connections", 0))
    if not runs:
        return None
    return runs[0] if which == "min" else runs[-1]


def _get(d: Optional[dict], *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


# ---------------------------------------------------------------- formatting

def fnum(v: Optional[float], unit: str = "", digits: int = 0) -> str:
    if v is None:
        return "not measured"
    if digits == 0 and abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    return f"{v:.{digits}f}{unit}"


def ratio_str(r: Optional[float], suffix: str = "× ws") -> str:
    if r is None:
        return "not measured"
    return f"{r:.2f}{suffix}"


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _median(xs: list) -> float:
    v = sorted(xs)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _saturated(phase: Optional[dict]) -> bool:
    return bool(_get(phase, "phase", "bench_saturated"))


# ---------------------------------------------------------------- the rows

def load_rows(latest: dict) -> list[dict]:
    """Every load metric with its target, the one-core Synapse value, the
    ratios to ws and to uWS from the same run and a verdict; then the
    targets set against uWS (issue 16)."""
    rows = _rows_against(latest, BASELINE)
    r = results(latest)
    if any(k[0] == UWS for k in r):
        against_uws = _rows_against(latest, UWS)
        if len(against_uws) == len(rows):
            for x, u in zip(rows, against_uws):
                x["vs_uws"] = re.sub(r"\bws\b", "uWS", u["vs_ws"])
    for x in rows:
        x.setdefault("vs_uws", "not measured")
    rows += uws_rows(latest)
    return rows


def _cpu_split(sc: Optional[dict], uc: Optional[dict]) -> str:
    """Server CPU per connection, user space / kernel, for Synapse and uWS:
    where a wall-time ratio can and cannot come from (the kernel's TCP work
    per connection is about the same for any server)."""
    parts = []
    for name, e in (("Synapse", sc), ("uWS", uc)):
        us, ks = _get(e, "phase", "server_user_s"), _get(e, "phase", "server_sys_s")
        if us is None or ks is None or not (e or {}).get("ok"):
            continue
        parts.append(f"{name} {1e6 * us / e['ok']:.1f} + {1e6 * ks / e['ok']:.1f} µs")
    return "server CPU per connection, user + kernel: " + ", ".join(parts) if parts else ""


def uws_rows(latest: dict) -> list[dict]:
    """The targets of issue 16, each a ratio to uWS measured in the same run."""
    r = results(latest)
    rows: list[dict] = []
    g = "vs uWS (one core)"

    def row(metric: str, target: str, actual: str, vs: str, ok: Optional[bool], note: str = "") -> None:
        rows.append({"group": g, "metric": metric, "target": target, "actual": actual, "vs_ws": "-",
                     "vs_uws": vs, "status": NOT_MEASURED if ok is None else (PASS if ok else FAIL), "note": note})

    sc, uc = _conn_entry(r, ONE_CORE), _conn_entry(r, UWS)
    srss, urss = _get(sc, "rss_per_conn_bytes"), _get(uc, "rss_per_conn_bytes")
    n = (sc or uc or {}).get("connections", "?")
    # The verdict is on all of RSS; the note splits it (anonymous memory,
    # and file pages: code that first ran after the baseline was read).
    parts = []
    for name, e in (("Synapse", sc), ("uWS", uc)):
        a, f = _get(e, "rss_anon_per_conn_bytes"), _get(e, "rss_file_per_conn_bytes")
        if a is not None and f is not None:
            parts.append(f"{name} {fnum(a)} + {fnum(f)} B")
    rss_note = ("anonymous + file-backed per connection: " + ", ".join(parts)) if parts else ""
    row(f"Server RSS per idle joined connection ({n} connections)", "≤ 512 B", fnum(srss, " B"),
        fnum(urss, " B (uWS)"), None if srss is None else srss <= 512, rss_note)
    sw = _get(sc, "wall_s") if sc and sc.get("failed") == 0 else None
    uw = _get(uc, "wall_s") if uc and uc.get("failed") == 0 else None
    speed = _div(uw, sw)
    row(f"{n} connections upgraded and joined: wall time", "≥ 1.2× faster than uWS", fnum(sw, " s", 3),
        ratio_str(speed, "× faster than uWS"), None if speed is None else speed >= 1.2, _cpu_split(sc, uc))

    def tail_row(metric: str, what: str, sp: Optional[float], up: Optional[float]) -> None:
        # "≤ uWS", judged over the tail rounds when there are two clean ones,
        # else on the single run's p99s.
        tail = tail_verdict(latest, what)
        if tail:
            row(metric, "≤ uWS", tail["actual"], tail["vs"], tail["ratio"] <= 1.0, tail["note"])
            return
        rt = _div(sp, up)
        row(metric, "≤ uWS", fnum(sp, " ms", 3), ratio_str(rt, "× uWS"), None if rt is None else rt <= 1.0,
            f"uWS {fnum(up, ' ms', 3)}")

    s, u = _latency(r, ONE_CORE, "heartbeat", "max"), _latency(r, UWS, "heartbeat", "max")
    tail_row(f"Heartbeat round trip p99, {(s or u or {}).get('idle_connections', '?')} idle connections alongside",
             "latency", _get(s, "rtt", "p99_ms"), _get(u, "rtt", "p99_ms"))
    s, u = _phase(r, ONE_CORE, "sustained"), _phase(r, UWS, "sustained")
    tail_row(f"Delivery p99 at {(s or {}).get('subscribers', 100)} subscribers, "
             f"{(s or {}).get('rate_per_s', 100):g} msg/s", "sustained",
             _get(s, "latency", "p99_ms"), _get(u, "latency", "p99_ms"))
    s = _phase(r, ONE_CORE, "fanout", "max", scenario="fanout_10k_100")
    u = _phase(r, UWS, "fanout", "max", scenario="fanout_10k_100")
    full = None if s is None else (s.get("lost") == 0 and s.get("duplicated") == 0 and bool(s.get("complete")))
    sp, up = _get(s, "latency", "p99_ms"), _get(u, "latency", "p99_ms")
    ok = None if s is None else bool(full) and sp is not None and sp < 150
    actual = "not measured" if s is None else (
        f"{s.get('deliveries'):,} of {s.get('expected_deliveries'):,} delivered, p99 {fnum(sp, ' ms', 1)}")
    uv = "not measured" if u is None else (f"uWS: {u.get('deliveries'):,} delivered, lost {u.get('lost'):,}, "
                                            f"p99 {fnum(up, ' ms', 1)}")
    row(f"Fan-out to {(s or u or {}).get('subscribers', 10000)} subscribers at "
        f"{(s or u or {}).get('rate_per_s', 100):g} msg/s: in full, p99", "in full, p99 < 150 ms", actual, uv, ok)
    s, u = _phase(r, ONE_CORE, "burst", "max"), _phase(r, UWS, "burst", "max")
    sv, uv2 = _get(s, "deliveries_per_s"), _get(u, "deliveries_per_s")
    rt = _div(sv, uv2)
    clean = s is not None and s.get("complete") and s.get("lost") == 0 and s.get("duplicated", 0) == 0 \
        and s.get("reordered", 0) == 0
    row(f"Burst fan-out to {(s or u or {}).get('subscribers', '?')} subscribers: deliveries/s", "≥ 10× uWS, none lost",
        fnum(sv, "/s"), ratio_str(rt, "× uWS"), None if rt is None else (rt >= 10 and bool(clean)))
    return rows


# A tail round whose runs lost more than this share of a core to the
# hypervisor (steal) measures the host, not the servers: 0.02 cores is 0.6 s
# of a 30 s sustained run, against the 0.0-0.3 s of a quiet one.
TAIL_STEAL_LIMIT_CORES = 0.02


def tail_pairs(latest: dict, what: str) -> list[tuple[int, float, float]]:
    """(round, Synapse p99, uWS p99) of every tail round (scripts/run-bench,
    latest["tail_rounds"]) in which both servers ran `what` ("latency" or
    "sustained") cleanly: exit 0, none lost, and steal under
    TAIL_STEAL_LIMIT_CORES in both runs."""
    pairs = []
    for rnd in latest.get("tail_rounds") or []:
        figs = rnd.get(what) or {}
        s, u = figs.get(ONE_CORE) or {}, figs.get(UWS) or {}
        clean = all(f.get("exit_code") == 0 and f.get("p99_ms") is not None and not f.get("lost")
                    and (f.get("steal_cores") or 0) <= TAIL_STEAL_LIMIT_CORES for f in (s, u))
        if clean and u["p99_ms"] > 0:
            pairs.append((rnd.get("round"), s["p99_ms"], u["p99_ms"]))
    return pairs


def tail_verdict(latest: dict, what: str) -> Optional[dict]:
    """A tail target judged over the rounds: the median of the rounds'
    Synapse/uWS ratios (each ratio from two runs minutes apart at most), so
    one run that met the hypervisor's steal decides nothing. None without at
    least two clean rounds (the report then reads the single run)."""
    pairs = tail_pairs(latest, what)
    if len(pairs) < 2:
        return None
    ratio = _median([sp / up for _, sp, up in pairs])
    each = ", ".join(f"round {n}: {sp:.3f} / {up:.3f} ({sp / up:.2f}×)" for n, sp, up in pairs)
    ran = [r for r in latest.get("tail_rounds") or [] if r.get(what)]
    left_out = len(ran) - len(pairs)
    return {"ratio": ratio,
            "actual": f"{_median([sp for _, sp, _ in pairs]):.3f} ms (median of {len(pairs)} rounds)",
            "vs": ratio_str(ratio, "× uWS (median of the rounds' ratios)"),
            "note": f"p99 Synapse / uWS in ms, {each}; uWS median {_median([up for _, _, up in pairs]):.3f} ms"
                    + (f"; {left_out} of {len(ran)} rounds left out (a failed run, a lost delivery, or steal "
                       f"over {TAIL_STEAL_LIMIT_CORES} cores)" if left_out else "")}


def _rows_against(latest: dict, baseline: str) -> list[dict]:
    """load_rows' table with `baseline` in the ws column."""
    BASELINE = baseline  # noqa: N806 - the rows below read it by this name
    r = results(latest)
    rows: list[dict] = []

    def row(group: str, metric: str, target: str, actual: str, vs_ws: str, status: str, note: str = "") -> None:
        rows.append({"group": group, "metric": metric, "target": target, "actual": actual,
                     "vs_ws": vs_ws, "status": status, "note": note})

    def verdict(ok: Optional[bool]) -> str:
        return NOT_MEASURED if ok is None else (PASS if ok else FAIL)

    # ---- issue 7 targets: ratios to ws, one server core
    g = "vs ws (one core)"
    for which in ("min", "max"):
        s, w = _phase(r, ONE_CORE, "burst", which), _phase(r, BASELINE, "burst", which)
        if which == "max" and s and _phase(r, ONE_CORE, "burst", "min") is s:
            continue  # only one burst size was run
        n = (s or w or {}).get("subscribers", "?")
        sv, wv = _get(s, "deliveries_per_s"), _get(w, "deliveries_per_s")
        rt = _div(sv, wv)
        complete = s is not None and s.get("complete") and s.get("lost") == 0
        ok = None if rt is None else (rt >= 4 and bool(complete))
        note = "" if complete or s is None else "Synapse did not deliver every message"
        if _saturated(s):
            note += " load generator saturated: Synapse's figure is a lower bound"
        row(g, f"Burst fan-out, {_get(s, 'messages') or 1000} messages to {n} subscribers: deliveries/s",
            "≥ 4× ws", fnum(sv, "/s"), ratio_str(rt), verdict(ok), note.strip())

    s, w = _phase(r, ONE_CORE, "fanout", "max"), _phase(r, BASELINE, "fanout", "max")
    n = (s or w or {}).get("subscribers", "?")
    rate = (s or w or {}).get("rate_per_s", 50)
    full = None if s is None else (s.get("lost") == 0 and s.get("duplicated") == 0 and bool(s.get("complete")))
    actual = "not measured" if s is None else (
        f"{s.get('deliveries'):,} of {s.get('expected_deliveries'):,} delivered, lost {s.get('lost'):,}")
    wsv = "not measured" if w is None else f"ws lost {w.get('lost'):,}"
    row(g, f"Fan-out to {n} subscribers at {rate:g} msg/s: delivered in full", "no loss", actual, wsv, verdict(full))
    sp, wp = _get(s, "latency", "p99_ms"), _get(w, "latency", "p99_ms")
    note = ""
    if s is not None and _get(s, "phase", "server_cpu_pct") is not None:
        note = (f"Synapse used {_get(s, 'phase', 'server_cpu_pct'):.0f} % of its core, the load generator "
                f"{_get(s, 'phase', 'bench_cpu_pct'):.0f} % of its own; p50 {fnum(_get(s, 'latency', 'p50_ms'), ' ms', 1)}")
        ld = (run_record(latest, ONE_CORE, "message_throughput") or {}).get("machine_load") or {}
        if ld.get("other_processes_cores") is not None:
            note += f"; other processes used {ld['other_processes_cores']} cores meanwhile"
    row(g, f"Fan-out to {n} subscribers at {rate:g} msg/s: p99 delivery latency", "≤ 250 ms",
        fnum(sp, " ms", 1), ratio_str(_div(sp, wp)), verdict(None if sp is None else sp <= 250), note)
    sd, wd = _get(s, "deliveries_per_s"), _get(w, "deliveries_per_s")
    rt = _div(sd, wd)
    note = "offered load is capped at subscribers × rate; ws must fall ≥ 5× behind for this to pass" if rt else ""
    if _saturated(s) or _saturated(w):
        note = (note + "; load generator saturated").strip("; ")
    row(g, f"Fan-out to {n} subscribers at {rate:g} msg/s: deliveries/s", "≥ 5× ws",
        fnum(sd, "/s"), ratio_str(rt), verdict(None if rt is None else rt >= 5), note)

    sc, wc = _conn_entry(r, ONE_CORE), _conn_entry(r, BASELINE)
    n = (sc or wc or {}).get("connections", "?")
    sw = _get(sc, "wall_s") if sc and sc.get("failed") == 0 else None
    ww = _get(wc, "wall_s") if wc and wc.get("failed") == 0 else None
    speed = _div(ww, sw)
    note = "" if not sc or sc.get("failed") == 0 else f"{sc.get('failed')} Synapse connections failed"
    scpu, wcpu = _get(sc, "phase", "server_cpu_s"), _get(wc, "phase", "server_cpu_s")
    if scpu is not None and wcpu is not None and sc.get("ok") and wc.get("ok"):
        note = (note + "; " if note else "") + (
            f"server CPU per connection: Synapse {1e6 * scpu / sc['ok']:.0f} µs, ws {1e6 * wcpu / wc['ok']:.0f} µs")
    row(g, f"{n} connections connected, upgraded and joined: wall time", "≥ 3× faster than ws",
        fnum(sw, " s", 3), ratio_str(speed, "× faster"), verdict(None if speed is None else speed >= 3), note)
    srss, wrss = _get(sc, "rss_per_conn_bytes"), _get(wc, "rss_per_conn_bytes")
    rt = _div(srss, wrss)
    row(g, f"Server RSS per idle joined connection ({n} connections)", "≤ 0.5× ws",
        fnum(srss, " B"), ratio_str(rt), verdict(None if rt is None else rt <= 0.5))
    row(g, f"Server RSS per idle joined connection ({n} connections), absolute", "≤ 4 KiB",
        fnum(srss, " B"), fnum(wrss, " B (ws)"), verdict(None if srss is None else srss <= 4096))
    for which in ("min", "max"):
        s, w = _latency(r, ONE_CORE, "heartbeat", which), _latency(r, BASELINE, "heartbeat", which)
        if which == "max" and s is not None and s is _latency(r, ONE_CORE, "heartbeat", "min"):
            continue
        n = (s or w or {}).get("idle_connections", "?")
        sp, wp = _get(s, "rtt", "p99_ms"), _get(w, "rtt", "p99_ms")
        rt = _div(sp, wp)
        note = ""
        if s is not None and w is not None:
            note = (f"p50 Synapse {fnum(_get(s, 'rtt', 'p50_ms'), ' ms', 3)}, ws {fnum(_get(w, 'rtt', 'p50_ms'), ' ms', 3)}"
                    f"; p999 Synapse {fnum(_get(s, 'rtt', 'p999_ms'), ' ms', 3)}, ws {fnum(_get(w, 'rtt', 'p999_ms'), ' ms', 3)}")
        row(g, f"Heartbeat round trip p99, {n} idle connections alongside", "≤ 0.8× ws",
            fnum(sp, " ms", 3), ratio_str(rt), verdict(None if rt is None else rt <= 0.8), note)

    # ---- the seed's targets (absolute; must pass by a wide margin)
    g = "seed targets"
    for n, limit in ((100, 1.0), (500, 5.0)):
        s, w = _conn_entry(r, ONE_CORE, n), _conn_entry(r, BASELINE, n)
        sv = _get(s, "wall_s") if s and s.get("failed") == 0 else None
        wv = _get(w, "wall_s") if w and w.get("failed") == 0 else None
        row(g, f"{n} connections connected and joined", f"< {limit:g} s", fnum(sv, " s", 3),
            ratio_str(_div(sv, wv)), verdict(None if sv is None else sv < limit),
            _margin(sv, limit))
    s, w = _latency(r, ONE_CORE, "heartbeat", "min"), _latency(r, BASELINE, "heartbeat", "min")
    sp, wp = _get(s, "rtt", "p99_ms"), _get(w, "rtt", "p99_ms")
    n = (s or {}).get("idle_connections", 100)
    row(g, f"Round-trip latency p99 (heartbeat) at {n} connections", "< 50 ms", fnum(sp, " ms", 3),
        ratio_str(_div(sp, wp)), verdict(None if sp is None else sp < 50), _margin(sp, 50))
    s, w = _phase(r, ONE_CORE, "sustained"), _phase(r, BASELINE, "sustained")
    sp, wp = _get(s, "latency", "p99_ms"), _get(w, "latency", "p99_ms")
    n = (s or {}).get("subscribers", 100)
    rate = (s or {}).get("rate_per_s", 100)
    row(g, f"Delivery latency p99 at {n} subscribers, {rate:g} msg/s", "< 50 ms", fnum(sp, " ms", 3),
        ratio_str(_div(sp, wp)), verdict(None if sp is None else sp < 50), _margin(sp, 50))
    sc, wc = _conn_entry(r, ONE_CORE), _conn_entry(r, BASELINE)
    srss, wrss = _get(sc, "rss_per_conn_bytes"), _get(wc, "rss_per_conn_bytes")
    row(g, "Memory per connection (server RSS growth)", "< 1 MB", fnum(srss, " B"),
        ratio_str(_div(srss, wrss)), verdict(None if srss is None else srss < 1_000_000), _margin(srss, 1_000_000))
    if s is None:
        actual, ok = "not measured", None
    else:
        bad = s.get("lost", 0) + s.get("duplicated", 0) + s.get("reordered", 0)
        actual = (f"{s.get('deliveries'):,} delivered; lost {s.get('lost')}, duplicated {s.get('duplicated')}, "
                  f"reordered {s.get('reordered')}")
        ok = bad == 0 and bool(s.get("complete"))
    wsv = "not measured" if w is None else f"ws lost {w.get('lost')}"
    row(g, f"{rate:g} msg/s for {(s or {}).get('duration_s', 30):g} s to {n} subscribers", "no drops",
        actual, wsv, verdict(ok))
    s, w = _phase(r, ONE_CORE, "burst", "min"), _phase(r, BASELINE, "burst", "min")
    sv = _get(s, "completion_s")
    wv = _get(w, "completion_s")
    n = (s or {}).get("subscribers", 100)
    row(g, f"1,000-message burst to {n} subscribers: until every subscriber has every message", "< 1 s",
        fnum(sv, " s", 3), ratio_str(_div(sv, wv)), verdict(None if s is None else (sv is not None and sv < 1)),
        _margin(sv, 1.0) if sv is not None else ("Synapse did not complete the burst" if s else ""))
    s, w = _phase(r, ONE_CORE, "single", "min"), _phase(r, BASELINE, "single", "min")
    sv, wv = _get(s, "fanout_complete", "max_ms"), _get(w, "fanout_complete", "max_ms")
    n = (s or {}).get("subscribers", 100)
    k = (s or {}).get("messages", "")
    row(g, f"Broadcast to {n} subscribers: time until the last has it (worst of {k})", "< 10 ms",
        fnum(sv, " ms", 3), ratio_str(_div(sv, wv)), verdict(None if sv is None else sv < 10), _margin(sv, 10))

    # ---- measured for information (no target)
    g = "other measurements"
    for s in _phases(r, ONE_CORE, "single"):
        w = _phase(r, BASELINE, "single", subs=s.get("subscribers"))
        sv, wv = _get(s, "latency", "p99_ms"), _get(w, "latency", "p99_ms")
        row(g, f"One message to {s.get('subscribers')} subscribers: delivery p50 / p99 / max",
            "-", f"{fnum(_get(s, 'latency', 'p50_ms'), '', 2)} / {fnum(sv, '', 2)} / "
                 f"{fnum(_get(s, 'latency', 'max_ms'), ' ms', 2)}", ratio_str(_div(sv, wv), "× ws (p99)"), INFO)
    for which in ("min", "max"):
        s, w = _latency(r, ONE_CORE, "ping", which), _latency(r, BASELINE, "ping", which)
        if s is None or (which == "max" and s is _latency(r, ONE_CORE, "ping", "min")):
            continue
        sp, wp = _get(s, "rtt", "p99_ms"), _get(w, "rtt", "p99_ms")
        row(g, f"Cortex ping round trip p50 / p99 / p999, {s.get('idle_connections')} idle connections", "-",
            f"{fnum(_get(s, 'rtt', 'p50_ms'), '', 3)} / {fnum(sp, '', 3)} / "
            f"{fnum(_get(s, 'rtt', 'p999_ms'), ' ms', 3)}", ratio_str(_div(sp, wp), "× ws (p99)"), INFO)
    q = r.get((ONE_CORE, "query_load"))
    if q or run_record(latest, ONE_CORE, "query_load"):
        qq = _get(q, "queries")
        mem = _get(q, "store", "stored")
        row(g, f"Queries/s over {fnum(mem)} memories ({_get(qq, 'concurrency')} concurrent)", "-",
            fnum(_get(qq, "queries_per_s"), "/s"), "n/a (Synapse only)", INFO if q else NOT_MEASURED)
        row(g, "Query first-thought latency p50 / p99", "-",
            f"{fnum(_get(qq, 'first_thought', 'p50_ms'), '', 2)} / {fnum(_get(qq, 'first_thought', 'p99_ms'), ' ms', 2)}",
            "n/a", INFO if q else NOT_MEASURED)
        row(g, "Query result latency p50 / p99", "-",
            f"{fnum(_get(qq, 'result', 'p50_ms'), '', 2)} / {fnum(_get(qq, 'result', 'p99_ms'), ' ms', 2)}",
            "n/a", INFO if q else NOT_MEASURED)
        if q:
            bad = (q.get("lost", 0), q.get("duplicated", 0), q.get("reordered", 0), _get(qq, "errors") or 0)
            row(g, "Queries lost / duplicated / reordered / errors", "-", " / ".join(str(b) for b in bad), "n/a", INFO)
    ar = r.get((ONE_CORE, "agent_relay"))
    if ar or run_record(latest, ONE_CORE, "agent_relay"):
        paced, mx = _get(ar, "paced"), _get(ar, "max")
        p50 = _get(paced, "token_latency", "p50_ms")
        what = (f"{_get(paced, 'runs')} runs x "
                f"{fnum((_get(paced, 'offered_tokens_per_s') or 0) / max(1, _get(paced, 'runs') or 1))} tokens/s "
                f"({_get(paced, 'pacing') or 'aligned'} pacing)")
        rounds = latest.get("agent_relay_rounds") or []
        syn = [x["synapse_p50_ms"] for x in rounds if x.get("synapse_exit_code") == 0 and x.get("synapse_p50_ms") is not None]
        flo = [x["floor"]["p50_ms"] for x in rounds
               if x["floor"].get("exit_code") == 0 and x["floor"].get("p50_ms") is not None]
        if syn and flo and len(syn) == len(flo) == len(rounds):
            # What the gateway adds: Synapse's median p50 less the gateway-less
            # relay's (bench/relay_floor.cpp), rounds interleaved, same pinning.
            added = _median(syn) - _median(flo)
            row("agent workers (issue 12)",
                f"Token relay worker -> client, {what}: p50 added over a gateway-less relay "
                f"(median of {len(rounds)} interleaved rounds)", "< 0.2 ms",
                f"{fnum(added, ' ms', 3)} (Synapse {fnum(_median(syn), '', 3)} - floor {fnum(_median(flo), ' ms', 3)})",
                "n/a (Synapse only)", verdict(added < 0.2),
                "p50 per round, Synapse: " + ", ".join(fnum(v, "", 3) for v in syn)
                + "; floor: " + ", ".join(fnum(v, "", 3) for v in flo) + " ms")
        else:
            row("agent workers (issue 12)", f"Token relay worker -> client, {what}: p50 added over a gateway-less relay",
                "< 0.2 ms", "not measured", "n/a (Synapse only)", NOT_MEASURED,
                "needs every round of Synapse and relay-floor (scripts/run-bench, agent_relay)")
        p99s = [x["synapse_p99_ms"] for x in rounds if x.get("synapse_p99_ms") is not None]
        whole = (f"{fnum(_median(syn), '', 3)} / {fnum(_median(p99s), ' ms', 3)} (medians of {len(syn)} rounds)"
                 if syn and p99s else f"{fnum(p50, '', 3)} / {fnum(_get(paced, 'token_latency', 'p99_ms'), ' ms', 3)}")
        row("agent workers (issue 12)", f"Token relay worker -> client, {what}: latency p50 / p99 (whole path)",
            "-", whole, "n/a (Synapse only)", INFO if ar else NOT_MEASURED)
        tps = _get(mx, "tokens_per_s")
        row("agent workers (issue 12)", "Tokens relayed per second by one core (workers sending as fast as read)",
            "> 500,000/s", f"{fnum(tps, '/s')} at server CPU {fnum(_get(mx, 'phase', 'server_cpu_pct'), ' %')}",
            "n/a (Synapse only)", verdict(tps is not None and tps > 500_000) if ar else NOT_MEASURED)
        if ar:
            bad = (ar.get("lost", 0), ar.get("duplicated", 0), ar.get("reordered", 0))
            row("agent workers (issue 12)", "Tokens lost / duplicated / reordered", "0 / 0 / 0",
                " / ".join(str(b) for b in bad), "n/a", verdict(bad == (0, 0, 0)))
    pr = r.get((ONE_CORE, "presence"))
    if pr or run_record(latest, ONE_CORE, "presence"):
        for size in (pr or {}).get("sizes", []):
            n, p = size.get("members"), size.get("presence_members")
            diffs, per_join = size.get("presence_diffs"), size.get("pushes_if_one_diff_per_join")
            exact = size.get("views_exact") == size.get("views") == p and size.get("ok")
            cheap = diffs is not None and per_join and diffs <= per_join / 100
            row("presence (issue 4)", f"Presence, {fnum(n)} members joining, {fnum(p)} with presence: presence_diff pushes",
                "≪ one per join (≤ 1 % of N×P/2), every view exact",
                f"{fnum(diffs)} diffs ({fnum(size.get('diffs_per_presence_member'), '', 1)} per presence member), "
                f"{size.get('views_exact')}/{size.get('views')} views exact; joins {fnum(size.get('join_s'), ' s', 2)}, "
                f"server CPU {fnum(_get(size, 'phase', 'server_cpu_s'), ' s', 2)}, "
                f"{fnum((size.get('presence_bytes') or 0) / 1e6, ' MB', 1)} presence traffic",
                f"per-join would be {fnum(per_join)}", verdict(bool(exact and cheap)))
    sys_s = {x.get("label"): x for x in latest.get("syscalls", [])}
    if sys_s:
        sv = _get(sys_s.get(ONE_CORE), "write_syscalls_per_delivery")
        wv = _get(sys_s.get(BASELINE), "write_syscalls_per_delivery")
        row(g, "Write syscalls per delivery, 1,000-message burst to 100 subscribers (strace -c)", "-",
            fnum(sv, "", 4), f"ws {fnum(wv, '', 4)}", INFO)
    for kind, which, what in (("burst", "min", "burst"), ("burst", "max", "burst"), ("fanout", "max", "fan-out"),
                              ("single", "max", "single message")):
        s = _phase(r, ONE_CORE, kind, which)
        m = _get(s, "server_syscalls")
        if m and not (which == "max" and kind == "burst" and s is _phase(r, ONE_CORE, "burst", "min")):
            row(g, f"Write syscalls per delivery, {what} to {s.get('subscribers')} subscribers "
                   f"(Synapse /metrics, no strace)", "-",
                fnum(m.get("write_syscalls_per_delivery"), "", 4), "n/a (ws has no counter)", INFO)
    return rows


def _margin(v: Optional[float], limit: float) -> str:
    if v is None or v <= 0:
        return ""
    if v >= limit:
        return ""
    r = limit / v
    return f"{r:.1f}× under the target" if r < 10 else f"{r:.0f}× under the target"


def all_cores_rows(latest: dict) -> list[dict]:
    """Headline figures for Synapse with its default threads, against ws on one core."""
    r = results(latest)
    rows = []

    def add(metric: str, sv: Optional[float], wv: Optional[float], unit: str, digits: int, higher_better: bool):
        rt = _div(sv, wv)
        rows.append({"metric": metric, "actual": fnum(sv, unit, digits),
                     "vs_ws": ratio_str(rt) if rt is not None else "not measured",
                     "better": None if rt is None else (rt > 1) == higher_better})

    if not any(k[0] == ALL_CORES for k in r):
        return rows
    for which in ("min", "max"):
        s, w = _phase(r, ALL_CORES, "burst", which), _phase(r, BASELINE, "burst", which)
        if s is None or (which == "max" and s is _phase(r, ALL_CORES, "burst", "min")):
            continue
        add(f"Burst fan-out to {s.get('subscribers')} subscribers: deliveries/s",
            _get(s, "deliveries_per_s"), _get(w, "deliveries_per_s"), "/s", 0, True)
    s, w = _phase(r, ALL_CORES, "fanout", "max"), _phase(r, BASELINE, "fanout", "max")
    if s:
        add(f"Fan-out to {s.get('subscribers')} subscribers at {s.get('rate_per_s'):g} msg/s: p99 latency",
            _get(s, "latency", "p99_ms"), _get(w, "latency", "p99_ms"), " ms", 1, False)
        add(f"Fan-out to {s.get('subscribers')} subscribers at {s.get('rate_per_s'):g} msg/s: deliveries/s",
            _get(s, "deliveries_per_s"), _get(w, "deliveries_per_s"), "/s", 0, True)
    sc, wc = _conn_entry(r, ALL_CORES), _conn_entry(r, BASELINE)
    if sc:
        add(f"{sc.get('connections')} connections joined: wall time", _get(sc, "wall_s"), _get(wc, "wall_s"),
            " s", 3, False)
    s, w = _latency(r, ALL_CORES, "heartbeat", "max"), _latency(r, BASELINE, "heartbeat", "max")
    if s:
        add(f"Heartbeat round trip p99, {s.get('idle_connections')} idle", _get(s, "rtt", "p99_ms"),
            _get(w, "rtt", "p99_ms"), " ms", 3, False)
    return rows


def render_text_table(rows: list[dict]) -> str:
    head = ["Metric", "Target", "Actual", "vs ws", "vs uWS", "Verdict"]
    data = [[x["metric"], x["target"], x["actual"], x["vs_ws"], x.get("vs_uws", "-"), x["status"]] for x in rows]
    widths = [max(len(str(c[i])) for c in [head] + data) for i in range(len(head))]
    widths[0] = min(widths[0], 80)
    lines = ["  ".join(str(h).ljust(widths[i]) for i, h in enumerate(head)),
             "  ".join("-" * w for w in widths)]
    for c in data:
        lines.append("  ".join(str(v)[:120].ljust(widths[i]) for i, v in enumerate(c)))
    return "\n".join(lines)


def load_verdict(rows: list[dict]) -> tuple[bool, list[str]]:
    """True when every targeted row passed; the reasons otherwise."""
    reasons = []
    for x in rows:
        if x["status"] in (FAIL, NOT_MEASURED) and x["target"] != "-":
            reasons.append(f"{x['metric']}: {x['status']} (target {x['target']}, actual {x['actual']}, "
                           f"vs ws {x['vs_ws']})")
    return (not reasons), reasons


