"""examples/websocket/client.py runs against a server and reports success or
failure through its exit status."""
import os
import subprocess
import sys
from pathlib import Path

from sdk_helpers import REPO

EXAMPLE = REPO / "examples" / "websocket" / "client.py"


def run_example(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("SYNAPSE_API_KEY", "SYNAPSE_URL", "PYTHONPATH")}
    env.update(env_extra)
    return subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=str(Path("/")))


def test_example_client_runs_every_step(server, make_key):
    res = run_example({"SYNAPSE_API_KEY": make_key("example"), "SYNAPSE_URL": server.ws_url})
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "stored memory #" in out and "thought 1 [" in out and "result: Project" in out
    assert "countdown interrupted after 3 steps: the example has seen enough" in out
    assert "received greeting {'text': 'hello from the example'}" in out
    assert out.rstrip().endswith("all steps worked")


def test_example_client_fails_with_a_bad_key(server):
    res = run_example({"SYNAPSE_API_KEY": "syn_bad_key", "SYNAPSE_URL": server.ws_url})
    assert res.returncode == 1
    assert "unauthorized" in res.stderr


def test_example_client_needs_a_key():
    res = run_example({})
    assert res.returncode == 2
