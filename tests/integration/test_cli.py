"""The command line: help everywhere, bad values exit 2 naming the key,
`keys create` prints the key alone on the last line, the example config
parses."""
import subprocess
import tempfile
from pathlib import Path

from synapse_server import REPO, binary


def run(*args, **kw):
    return subprocess.run([binary(), *args], capture_output=True, text=True, timeout=20, **kw)


def test_help_on_every_command():
    for args in [(), ("serve",), ("keys",), ("keys", "create"), ("keys", "list"), ("keys", "revoke"),
                 ("config",), ("config", "example")]:
        r = run(*args, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, args


def test_serve_help_lists_options_with_defaults():
    out = run("serve", "--help").stdout
    for flag, default in [("--port", "4000"), ("--max-message-bytes", "1048576"), ("--idle-timeout-ms", "60000"),
                          ("--messages-per-min", "60"), ("--history-size", "100"), ("--threads", "0")]:
        assert flag in out and default in out.split(flag, 1)[1].split("\n", 1)[0], flag


def test_bad_values_exit_2_and_name_the_key():
    with tempfile.TemporaryDirectory() as d:
        for args, key in [(["--port", "99999"], "server.port"), (["--idle-timeout-ms", "x"], "websocket.idle_timeout_ms"),
                          (["--log-level", "chatty"], "server.log_level"),
                          (["--messages-per-min", "-1"], "limits.messages_per_min")]:
            r = run("serve", "--data-dir", d, *args)
            assert r.returncode == 2, (args, r.stderr)
            assert key in r.stderr, (args, r.stderr)
        bad = Path(d) / "bad.toml"
        bad.write_text("[limits]\nmax_topics = -5\n")
        r = run("serve", "--config", str(bad), "--data-dir", d)
        assert r.returncode == 2 and "limits.max_topics" in r.stderr
        bad.write_text("[limits\n")
        r = run("serve", "--config", str(bad), "--data-dir", d)
        assert r.returncode == 2 and "cannot read config file" in r.stderr
        assert run("serve", "--no-such-flag").returncode == 2
        assert run().returncode == 2


def test_example_config_is_committed_and_current():
    committed = (REPO / "config" / "synapse.example.toml").read_text()
    assert committed == run("config", "example").stdout


def test_keys_create_prints_key_alone_on_last_line_and_list_hides_it():
    with tempfile.TemporaryDirectory() as d:
        r = run("keys", "create", "--name", "ci", "--publish", "--data-dir", d)
        assert r.returncode == 0
        key = r.stdout.strip().splitlines()[-1]
        assert key.startswith("syn_") and " " not in key
        listing = run("keys", "list", "--data-dir", d).stdout
        assert "ci" in listing and "publish" in listing and key not in listing
        js = run("keys", "list", "--json", "--data-dir", d).stdout
        import json
        rows = [json.loads(l) for l in js.splitlines()]
        assert rows[0]["name"] == "ci" and rows[0]["publish"] is True and rows[0]["revoked_at"] is None


def test_port_in_use_fails_cleanly():
    import socket
    with socket.socket() as s, tempfile.TemporaryDirectory() as d:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run("serve", "--port", str(s.getsockname()[1]), "--data-dir", d)
        assert r.returncode == 1 and "cannot listen" in (r.stdout + r.stderr)


def test_every_script_answers_help_without_doing_its_work():
    # --help must describe, not run: make-report and run-tests would otherwise
    # start a half-hour test run, install-deps an apt-get.
    for script in sorted((REPO / "scripts").iterdir()):
        if not script.is_file() or not (script.stat().st_mode & 0o111):
            continue
        r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=20, cwd=REPO)
        assert r.returncode == 0, (script.name, r.stderr[-500:])
        assert "usage" in r.stdout.lower() or "called by" in r.stdout, (script.name, r.stdout[:300])
        assert "===" not in r.stdout, (script.name, "it started working instead of printing help")


def test_every_bench_binary_answers_help_without_doing_its_work():
    # The benchmark programs `make build` puts in build/release (bench/; the
    # ASan build, whose server the integration-asan pass uses, has none).
    # deflate-micro used to ignore --help and run for 10 s; relay-floor
    # printed its usage as an error.
    build = REPO / "build" / "release"
    for name in ("synapse-bench", "relay-floor", "deflate-micro", "send-syscall"):
        path = build / name
        assert path.exists(), f"{name} is not built in {build} (make build)"
        r = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, (name, r.stderr[-300:])
        assert r.stdout.lower().startswith("usage"), (name, r.stdout[:300])
        # deflate-micro's table starts "| payload", send-syscall's rounds "round 1".
        assert "| payload" not in r.stdout and "round 1" not in r.stdout, (name, "it ran instead of printing help")
