#!/usr/bin/python3
"""Writes docs/verification/websocket-synapse-validation-report.md from
measured results only: the JUnit XML files of scripts/run-tests
(build/test-results/*.xml) and the benchmark run of scripts/run-bench
(bench/results/latest.json). Called by scripts/make-report; standard library
only. Nothing in the report is typed by hand: every verdict, including the
READY / NOT READY recommendation, is computed here from those files, and
whatever is missing is reported as missing.

usage: generate.py [--tests DIR] [--bench FILE] [--out FILE]
                   [--tests-exit N] [--bench-exit N]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402

SECTIONS = ["connection", "protocol", "load", "security"]
TITLES = {"connection": "Connection", "protocol": "Protocol", "load": "Load", "security": "Security",
          "other": "Other tests"}

# Test groups (a pytest module, a gtest suite, a node test file or suite) map
# to the seed's sections by name; first match wins, so the specific names
# (crash_recovery, slow_consumer) come before the general ones (recovery).
RULES = [
    ("connection", ["crash_recovery", "crash"]),
    ("security", ["slow_consumer", "auth", "authentication", "authorization", "token", "jwt", "key_store",
                  "api_key", "key", "validation", "limit", "limiter", "rate_limit", "origin", "revocation",
                  "revoke", "security", "hostile", "hardening", "fuzz", "crypto", "forbidden"]),
    ("connection", ["connection", "heartbeat", "lifecycle", "handshake", "health", "shutdown", "reconnect",
                    "reconnection", "idle", "drain", "graceful", "upgrade", "config", "cli", "setup"]),
    ("protocol", ["query", "queries", "tool", "pubsub", "presence", "recovery", "error_handling", "protocol",
                  "cortex", "broadcast", "compat", "compatibility", "phoenix", "frame", "codec", "envelope",
                  "utf8", "topic", "history", "sdk", "channel", "memory", "memories", "bad_input", "malformed",
                  "message", "metrics", "http", "cluster"]),
    ("load", ["load", "bench", "benchmark", "throughput", "stress"]),
]
# When neither the group nor the test name matches, by result file.
FILE_DEFAULT = {"compat-js": "protocol", "sdk-js": "protocol", "sdk-python": "protocol", "unit": "protocol",
                "unit-asan": "protocol",
                "browser": "security"}
# Result files scripts/run-tests writes; these five always run. unit-asan is
# the unit suite again in the ASan+UBSan build (build/debug); integration-soak
# is the 10-round cluster soaks, run beside integration.
REQUIRED_FILES = ["unit", "unit-asan", "integration", "integration-soak", "integration-asan"]
# Result files written by ctest (gtest cases named Suite.Test).
CTEST_FILES = ("unit", "unit-asan")
OPTIONAL_FILES = {"compat-js": REPO / "tests" / "js", "sdk-js": REPO / "clients" / "js" / "test",
                  "sdk-python": REPO / "clients" / "python" / "tests", "browser": REPO / "tests" / "browser"}


def tokens(name: str) -> str:
    """`test_slow_consumer.py`, `SlowConsumer.Closes`, `slow consumer` -> `_slow_consumer_...`."""
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    return "_" + re.sub(r"[^a-z0-9]+", "_", s).strip("_") + "_"


def classify(*names: str) -> str | None:
    """A keyword matches whole words (plural allowed): `cli` is not `client`."""
    for name in names:
        t = tokens(name)
        for section, words in RULES:
            if any(re.search(r"_" + w + r"s?_", t) for w in words):
                return section
    return None


def parse_junit(path: Path) -> list[dict]:
    """Every test case in one JUnit file: group, name, outcome, message."""
    cases: list[dict] = []
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        return [{"file": path.stem, "group": path.stem, "name": f"(unreadable result file: {e})",
                 "outcome": "failed", "message": str(e), "section": "other"}]

    def walk(el: ET.Element, suites: list[str]) -> None:
        for child in el:
            if child.tag == "testsuite":
                walk(child, suites + [child.get("name") or ""])
            elif child.tag == "testcase":
                cases.append(case(child, suites))
            else:
                walk(child, suites)

    def case(tc: ET.Element, suites: list[str]) -> dict:
        name = tc.get("name") or "?"
        classname = tc.get("classname") or ""
        file_attr = tc.get("file") or ""
        # The most telling group name: the pytest module, the gtest suite
        # (Suite.Test), the node test file, else the enclosing suite.
        if classname and classname not in ("test", name):
            group = classname.split(".")[-1] if "." in classname else classname
        elif file_attr:
            group = Path(file_attr).stem
        elif "." in name and path.stem in CTEST_FILES:
            group = name.split(".")[0]
        else:
            group = next((s for s in reversed(suites) if s and s not in ("pytest", "root")), path.stem)
        outcome, message = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = (child.get("message") or child.text or "").strip().splitlines()[0:1]
                message = message[0][:300] if message else ""
                break
            if child.tag == "skipped":
                outcome = "skipped"
                message = (child.get("message") or "").strip()[:200]
        if tc.get("status") == "notrun" and outcome == "passed":
            outcome = "skipped"
        if tc.get("status") == "fail" and outcome == "passed":
            outcome = "failed"
        section = classify(group, file_attr, " ".join(suites), name) or FILE_DEFAULT.get(path.stem, "other")
        return {"file": path.stem, "group": group, "name": name, "outcome": outcome, "message": message,
                "section": section}

    if root.tag == "testcase":
        cases.append(case(root, []))
    else:
        walk(root, [root.get("name") or ""] if root.tag == "testsuite" else [])
    return cases


def rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    out += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tests", default=str(REPO / "build" / "test-results"))
    ap.add_argument("--bench", default=str(REPO / "bench" / "results" / "latest.json"))
    ap.add_argument("--out", default=str(REPO / "docs" / "verification" / "websocket-synapse-validation-report.md"))
    ap.add_argument("--tests-exit", type=int, default=None)
    ap.add_argument("--bench-exit", type=int, default=None)
    args = ap.parse_args()

    reasons: list[str] = []

    # ---------------------------------------------------------------- tests
    tests_dir = Path(args.tests)
    files = sorted(tests_dir.glob("*.xml")) if tests_dir.is_dir() else []
    cases: list[dict] = []
    for f in files:
        cases += parse_junit(f)
    present = {f.stem for f in files}
    missing = [f for f in REQUIRED_FILES if f not in present]
    missing += [f for f, d in OPTIONAL_FILES.items() if f not in present and d.is_dir() and any(d.iterdir())]
    for m in missing:
        reasons.append(f"test suite `{m}` produced no results ({rel(tests_dir)}/{m}.xml is missing)")
    if args.tests_exit not in (None, 0):
        reasons.append(f"scripts/run-tests exited with {args.tests_exit} (a suite failed or did not run)")

    per_section: dict[str, list[dict]] = {s: [] for s in SECTIONS + ["other"]}
    for c in cases:
        per_section.setdefault(c["section"], []).append(c)

    def counts(cs: list[dict]) -> tuple[int, int, int, int]:
        p = sum(1 for c in cs if c["outcome"] == "passed")
        f = sum(1 for c in cs if c["outcome"] == "failed")
        s = sum(1 for c in cs if c["outcome"] == "skipped")
        return len(cs), p, f, s

    # ---------------------------------------------------------------- bench
    latest = None
    bench_path = Path(args.bench)
    if bench_path.is_file():
        try:
            latest = json.loads(bench_path.read_text())
        except json.JSONDecodeError as e:
            reasons.append(f"benchmark results unreadable: {e}")
    else:
        reasons.append("no benchmark results (bench/results/latest.json is missing)")
    rows = benchlib.load_rows(latest) if latest else []
    mt_rows = benchlib.all_cores_rows(latest) if latest else []
    load_ok, load_reasons = benchlib.load_verdict(rows) if rows else (False, ["no load measurements"])
    if latest and latest.get("small"):
        load_ok = False
        load_reasons.insert(0, "the benchmarks ran at the reduced --small sizes; the targets need the full sizes")
    if args.bench_exit not in (None, 0):
        load_reasons.append(f"scripts/run-bench exited with {args.bench_exit}")
        load_ok = False
    failed_runs = [r for r in (latest or {}).get("runs", []) if r.get("exit_code") != 0]
    for r in failed_runs:
        load_reasons.append(f"benchmark run {r['label']} {r['scenario']} failed "
                            f"(exit {r.get('exit_code')}): {(r.get('error') or r.get('stderr') or '')[-200:]}")
        load_ok = False
    for s in (latest or {}).get("skipped", []):
        load_reasons.append(f"benchmark run {s['label']} {s['scenario']} skipped ({s['why']})")
        load_ok = False

    # ---------------------------------------------------------- verdicts
    verdict: dict[str, str] = {}
    for s in ["connection", "protocol", "security"]:
        n, p, f, sk = counts(per_section[s])
        if n == 0:
            verdict[s] = "NO TESTS"
            reasons.append(f"{TITLES[s]}: no test results map to this section")
        elif f:
            verdict[s] = "FAIL"
            reasons.append(f"{TITLES[s]}: {f} of {n} tests failed")
        else:
            verdict[s] = "PASS"
    load_tests = per_section["load"]
    if counts(load_tests)[2]:
        load_ok = False
        load_reasons.append(f"{counts(load_tests)[2]} load-related tests failed")
    verdict["load"] = "PASS" if load_ok else "FAIL"
    if not load_ok:
        reasons += [f"Load: {x}" for x in load_reasons]
    n_other, _, f_other, _ = counts(per_section["other"])
    if f_other:
        reasons.append(f"Other tests: {f_other} of {n_other} failed")
    ready = not reasons

    # ---------------------------------------------------------------- write
    now = dt.datetime.now().isoformat(timespec="seconds")
    out: list[str] = []
    w = out.append
    w("# Synapse: WebSocket gateway validation report")
    w("")
    w(f"Generated {now} by `make report` (`scripts/make-report` → `bench/report/generate.py`) from "
      f"`{rel(tests_dir)}/*.xml` ({len(files)} files, {len(cases)} test cases) and "
      f"`{rel(bench_path)}` (run {(latest or {}).get('run_id', 'none')}). "
      "Every figure and verdict below is computed from those files; nothing is written by hand. "
      "A value that was not measured says so.")
    w("")
    w(f"## Recommendation: **{'READY' if ready else 'NOT READY'}**")
    w("")
    if ready:
        w("Every test passed, every section has tests, and every load target was met in this run.")
    else:
        w("Not ready, because:")
        w("")
        for r in reasons:
            w(f"- {r}")
    w("")
    w("## Summary")
    w("")
    srows = []
    for s in SECTIONS:
        n, p, f, sk = counts(per_section[s])
        extra = ""
        if s == "load":
            met = sum(1 for x in rows if x["status"] == benchlib.PASS)
            targeted = sum(1 for x in rows if x["target"] != "-")
            extra = f"; {met} of {targeted} load targets met"
        srows.append([TITLES[s], verdict[s], str(n), str(p), str(f), str(sk) + extra])
    n, p, f, sk = counts(per_section["other"])
    if n:
        srows.append([TITLES["other"], "FAIL" if f else "PASS", str(n), str(p), str(f), str(sk)])
    w(table(["Section", "Verdict", "Tests", "Passed", "Failed", "Skipped"], srows))
    w("")
    w("Test results by file:")
    w("")
    frows = []
    for name in sorted(present | set(missing)):
        cs = [c for c in cases if c["file"] == name]
        n, p, f, sk = counts(cs)
        frows.append([f"{name}.xml", "missing" if name in missing else ("FAIL" if f else "pass"),
                      str(n), str(p), str(f), str(sk)])
    w(table(["Result file", "Verdict", "Tests", "Passed", "Failed", "Skipped"], frows) if frows
      else "_No test result files were found._")
    w("")

    number = 1
    for s in SECTIONS + (["other"] if per_section["other"] else []):
        w(f"## {number}. {TITLES[s]}")
        number += 1
        w("")
        if s == "load":
            write_load(w, latest, rows, mt_rows, load_ok, load_reasons)
            if load_tests:
                w("")
                w("Load-related tests:")
                w("")
        cs = per_section[s]
        if not cs:
            if s != "load":
                w("_No test results map to this section._")
                w("")
            continue
        w(f"Verdict: **{verdict.get(s, 'FAIL' if counts(cs)[2] else 'PASS')}**")
        w("")
        groups: dict[tuple[str, str], list[dict]] = {}
        for c in cs:
            groups.setdefault((c["group"], c["file"]), []).append(c)
        grows = []
        for (g, f), gcs in sorted(groups.items()):
            n, p, fl, sk = counts(gcs)
            grows.append([g, f, "FAIL" if fl else "pass", str(n), str(p), str(fl), str(sk)])
        w(table(["Test group", "Suite", "Verdict", "Tests", "Passed", "Failed", "Skipped"], grows))
        w("")
        fails = [c for c in cs if c["outcome"] == "failed"]
        if fails:
            w("Failed tests:")
            w("")
            for c in fails[:50]:
                w(f"- `{c['file']}` {md_escape(c['group'])} :: {md_escape(c['name'])}: {md_escape(c['message'])}")
            if len(fails) > 50:
                w(f"- … and {len(fails) - 50} more")
            w("")

    write_machine(w, latest)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(out) + "\n")
    print(f"report: {os.path.relpath(args.out, REPO)}: {'READY' if ready else 'NOT READY'}")
    for r in reasons:
        print(f"  - {r}")
    return 0


def write_load(w, latest: dict | None, rows: list[dict], mt_rows: list[dict], ok: bool, reasons: list[str]) -> None:
    if not latest:
        w("Verdict: **FAIL**: no benchmark results.")
        w("")
        return
    w(f"Verdict: **{'PASS' if ok else 'FAIL'}**")
    w("")
    w("Synapse runs with `--threads 1` on one core (core 0); the baseline is a minimal server on the npm `ws` "
      "package (`bench/peers/node-ws`) on the same core, measured in the same run; the load generator "
      "`synapse-bench` runs on core 1. A second baseline is the uWebSockets Phoenix V2 peer "
      "(`../shared/peers/uws`, built into `build/peers/uws`), pinned and measured the same way. "
      "\"vs ws\" and \"vs uWS\" are Synapse's figure divided by the baseline's (for wall "
      "times: how many times faster). Targets come from issue 7 (ratios to ws), issue 16 (ratios to uWS) "
      "and the seed (absolute).")
    w("")
    if latest.get("small"):
        w("**These results come from a `--small` smoke run at reduced sizes; they cannot show the targets.**")
        w("")
    # Steal: CPU time the hypervisor gave to other guests while this VM's
    # vCPUs wanted to run (run-bench's machine_load.steal_s; older runs lack it).
    stolen = [(r.get("machine_load") or {}).get("steal_cores") for r in latest.get("runs", [])]
    stolen = [x for x in stolen if x is not None]
    if stolen and max(stolen) > 0.01:
        w(f"**The hypervisor took CPU from this VM during the run**: steal up to {max(stolen):.3f} cores on "
          f"average in a benchmark run (per run under *Machine and commands*); a run's latency tails move with it.")
        w("")
    noisy = [(r["label"], r["scenario"], (r.get("machine_load") or {}).get("other_processes_cores"))
             for r in latest.get("runs", [])]
    noisy = [n for n in noisy if n[2] is not None and n[2] > 0.2]
    if noisy:
        worst = max(n[2] for n in noisy)
        w(f"**The machine was shared during this run**: other processes used up to {worst:.2f} cores on "
          f"average during {len(noisy)} of {len(latest.get('runs', []))} benchmark runs "
          "(per run in the table under *Machine and commands*), so these figures are noisy.")
        w("")
    w(table(["Metric", "Target", "Actual", "vs ws", "vs uWS", "Result"],
            [[x["metric"], x["target"], x["actual"], x["vs_ws"], x.get("vs_uws", "-"),
              ("**FAIL**" if x["status"] == benchlib.FAIL else x["status"]) +
              (f" ({x['note']})" if x.get("note") else "")] for x in rows]))
    w("")
    missed = [x for x in rows if x["status"] in (benchlib.FAIL, benchlib.NOT_MEASURED) and x["target"] != "-"]
    if missed:
        w("Targets missed or not measured in this run, and what the measurements say about why:")
        w("")
        for x in missed:
            w(f"- **{x['metric']}**: target {x['target']}, actual {x['actual']} (vs ws {x['vs_ws']}). "
              f"{why(latest, x)}")
        w("")
    if mt_rows:
        w("Synapse with its default thread count (all cores, unpinned; load generator still on core 1) "
          "against the same one-core `ws` baseline:")
        w("")
        w(table(["Metric", "Actual", "vs ws"], [[x["metric"], x["actual"], x["vs_ws"]] for x in mt_rows]))
        w("")
    sys_rows = []
    for s in latest.get("syscalls", []):
        sys_rows.append([s.get("label", "?"), str(s.get("deliveries", "not measured")),
                         str(s.get("write_syscalls", "not measured")),
                         benchlib.fnum(s.get("write_syscalls_per_delivery"), "", 4),
                         ", ".join(f"{k} {v}" for k, v in sorted((s.get("syscalls") or {}).items(),
                                                                 key=lambda kv: -kv[1])[:6]) or s.get("error", "")])
    if sys_rows:
        w("Syscalls per delivery (`strace -c -f -p <server pid>` attached around one 1,000-message burst to "
          "100 subscribers; strace slows the server, which can let more messages coalesce per write):")
        w("")
        w(table(["Server", "Deliveries", "Write syscalls", "Per delivery", "Most frequent syscalls"], sys_rows))
        w("")
    trows = []
    counted = {what: {n for n, _, _ in benchlib.tail_pairs(latest, what)} for what in ("latency", "sustained")}
    for rnd in latest.get("tail_rounds") or []:
        for what, name in (("latency", "heartbeat p99, most idle"), ("sustained", "delivery p99, 100 × 100/s")):
            figs = rnd.get(what)
            if not figs:
                continue
            s, u = figs.get(benchlib.ONE_CORE) or {}, figs.get(benchlib.UWS) or {}
            sp, up = s.get("p99_ms"), u.get("p99_ms")
            trows.append([str(rnd.get("round")), rnd.get("source", ""), " then ".join(rnd.get("order", [])), name,
                          benchlib.fnum(sp, " ms", 3), benchlib.fnum(up, " ms", 3),
                          benchlib.ratio_str(benchlib._div(sp, up), "×"),
                          f"{s.get('steal_cores', '-')} / {u.get('steal_cores', '-')}",
                          f"{s.get('lost', '-')} / {u.get('lost', '-')}",
                          f"exit {s.get('exit_code')} / {u.get('exit_code')}",
                          "yes" if rnd.get("round") in counted[what] else "left out"])
    if trows:
        w("The two latency-tail targets against uWS, round by round (`scripts/run-bench`'s tail rounds: "
          "round 1 is the scenario runs above, later rounds run `latency` and `message_throughput --only "
          "sustained` again on fresh servers, the two servers in alternating order; the table above judges "
          "the median of the rounds' ratios):")
        w("")
        w(table(["Round", "Runs", "Order", "Figure", "Synapse", "uWS", "Synapse / uWS", "Steal cores (S / uWS)",
                 "Lost (S / uWS)", "Runs' exit", f"In the verdict (steal ≤ {benchlib.TAIL_STEAL_LIMIT_CORES})"],
                trows))
        w("")
    w("Lost, duplicated and reordered messages over every scenario (each subscriber checks the sequence "
      "number and `_meta.offset` of every delivery):")
    w("")
    lrows = []
    for r in latest.get("runs", []):
        res = (r.get("result") or {}).get("result") or {}
        lrows.append([r["label"], r["scenario"], "ok" if r.get("exit_code") == 0 else f"exit {r.get('exit_code')}",
                      str(res.get("lost", "not measured")), str(res.get("duplicated", "not measured")),
                      str(res.get("reordered", "not measured")), str(res.get("unexpected_closes", "not measured")),
                      f"{r.get('duration_s', 0):.0f} s"])
    w(table(["Server", "Scenario", "Run", "Lost", "Duplicated", "Reordered", "Dropped connections", "Time"], lrows))
    w("")
    w("<details><summary>The load generator's own tables, per run</summary>")
    w("")
    for r in latest.get("runs", []):
        w(f"`{r.get('command', '')}`")
        w("")
        w("```")
        w((r.get("table") or r.get("error") or r.get("stderr") or "(no output)").rstrip())
        w("```")
        w("")
    w("</details>")
    w("")


def why(latest: dict, row: dict) -> str:
    """What the measurements themselves say about a missed target."""
    bits = []
    if row["status"] == benchlib.NOT_MEASURED:
        bits.append("A run it depends on failed, was skipped or did not include this size.")
    if row.get("note"):
        bits.append(row["note"][0].upper() + row["note"][1:] + ".")
    if latest.get("small"):
        bits.append("The run used the reduced --small sizes.")
    loads = [(r.get("machine_load") or {}).get("other_processes_cores") or 0 for r in latest.get("runs", [])]
    if loads and max(loads) > 0.2:
        bits.append(f"Other processes used up to {max(loads):.2f} cores during the runs, so the one-core "
                    "figures include time the server spent waiting for its core.")
    return " ".join(bits) or "No measured cause beyond the figures themselves."


def write_machine(w, latest: dict | None) -> None:
    w("## Machine and commands")
    w("")
    if not latest:
        w("_No benchmark run._")
        return
    m = latest.get("machine", {})
    w(table(["", ""], [
        ["CPU", f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores)"],
        ["Memory", f"{m.get('memory_gib', '?')} GiB"],
        ["OS / kernel", f"{m.get('os', '?')} / {m.get('kernel', '?')}"],
        ["Open files limit", str(m.get("open_files_limit", "?"))],
        ["Node / ws", f"{m.get('node', '?')} / ws {m.get('ws', '?')}"],
        ["Load average at start / end", f"{m.get('loadavg_at_start')} / {m.get('loadavg_at_end')}"],
        ["Source revision", str(latest.get("source_revision") or "unknown")],
        ["Benchmark run", f"{latest.get('run_id')} ({latest.get('started')} to {latest.get('finished')}, "
                          f"{latest.get('duration_s')} s{', --small' if latest.get('small') else ''})"],
    ]))
    w("")
    c = latest.get("commands", {})
    w("Commands:")
    w("")
    w("- `make report` = `scripts/run-tests` (JUnit XML into `build/test-results/`), then `scripts/run-bench`, "
      "then `bench/report/generate.py`")
    w(f"- benchmarks: `{c.get('entry', '')}`")
    w(f"- Synapse flags (every limit off): `{c.get('synapse_flags', '')}`, a key from "
      "`synapse keys create --name bench --unlimited`, a fresh temporary data dir and free port per run")
    w(f"- pinning: {c.get('pinning', '')}")
    w("")
    rows = []
    for r in latest.get("runs", []):
        load = r.get("machine_load") or {}
        rows.append([r["label"], r["scenario"], (r.get("server") or {}).get("command", "?"), r.get("command", "?"),
                     str(load.get("other_processes_cores", "?")), str(load.get("steal_cores", "-"))])
    w(table(["Server", "Scenario", "Server command", "Load generator command", "Other load (cores)",
             "Steal (cores)"], rows))
    w("")


if __name__ == "__main__":
    sys.exit(main())
