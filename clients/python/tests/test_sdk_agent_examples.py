"""examples/agents/README.md, section "Python", works as written: its
`<!-- agents-py: NAME -->` sh blocks run with bash, in order, in a scratch
copy of the repository's layout (build/release/synapse is the binary under
test, clients/ and examples/ are this repository's), against a real server
started the way the `server` block says (`make run`: 127.0.0.1, data in
./data; its SYNAPSE_* settings become flags, the port is a free one, given
to the scripts as SYNAPSE_URL). The agents are real worker processes; the
install block makes a venv and pip-installs the SDK from clients/python,
so the examples use the installed SDK, not the sources."""
from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from synapse_server import SynapseServer, binary

REPO = Path(__file__).resolve().parents[3]
README = REPO / "examples" / "agents" / "README.md"
BLOCK = re.compile(r"<!-- agents-py: ([\w-]+) -->\n```sh\n(.*?)\n```", re.S)

pytestmark = pytest.mark.slow


def blocks() -> dict[str, str]:
    text = README.read_text()
    python = text[text.index("\n## Python\n"):]
    nxt = python.find("\n## ", 1)
    python = python if nxt < 0 else python[:nxt]
    found = dict(BLOCK.findall(python))
    for name in ("server", "install", "keys", "echo-agent", "echo-ask", "retrieval-agent", "retrieval-ask"):
        assert name in found, f"{README}: no `<!-- agents-py: {name} -->` sh block in the Python section"
    return found


def server_flags(block: str) -> dict[str, str]:
    """`SYNAPSE_X_Y=v ... make run` -> {"--x-y": "v"} (the options table's env names)."""
    words = shlex.split(block)
    assert words[-2:] == ["make", "run"], f"the server block must be `... make run`: {block!r}"
    flags = {}
    for w in words[:-2]:
        name, _, value = w.partition("=")
        assert name.startswith("SYNAPSE_"), w
        flags["--" + name[len("SYNAPSE_"):].lower().replace("_", "-")] = value
    return flags


def env_for(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(SYNAPSE_URL=url, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONUNBUFFERED="1")
    return env


def run_block(body: str, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"{body!r} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


class Agent:
    """A worker started by a README block, in the background."""

    def __init__(self, body: str, cwd: Path, env: dict) -> None:
        self.proc = subprocess.Popen(["bash", "-c", body], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    def wait_serving(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if "serving agent:" in line:
                    return line
            assert self.proc.poll() is None, f"the agent exited {self.proc.returncode}: {self.proc.stderr.read()}"
        raise AssertionError("the agent did not start serving")

    def stop(self) -> int:
        """Ctrl-C, as the README says; the agent closes and exits 0."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches the whole group
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            return -9


@pytest.fixture
def layout():
    d = Path(tempfile.mkdtemp(prefix="synapse-agents-"))
    (d / "build" / "release").mkdir(parents=True)
    (d / "build" / "release" / "synapse").symlink_to(binary())
    (d / "clients").symlink_to(REPO / "clients")
    (d / "examples").symlink_to(REPO / "examples")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_python_agent_examples_run_as_the_readme_says(layout):
    b = blocks()
    with SynapseServer(flags=server_flags(b["server"]), data_dir=str(layout / "data")) as s:
        env = env_for(s.ws_url)
        run_block(b["install"], layout, env, timeout=300)
        installed = subprocess.run([str(layout / ".venv/bin/python"), "-c", "import mimo_synapse; print(mimo_synapse.__file__)"],
                                   cwd="/", capture_output=True, text=True, env=env_for(s.ws_url))
        assert str(layout / ".venv") in installed.stdout, installed  # the installed copy, not the sources
        run_block(b["keys"], layout, env)
        assert (layout / "worker.key").read_text().strip() and (layout / "user.key").read_text().strip()

        echo = Agent(b["echo-agent"], layout, env)
        try:
            echo.wait_serving()
            out = run_block(b["echo-ask"], layout, env)
        finally:
            assert echo.stop() == 0
        lines = out.stdout.strip().splitlines()
        assert lines[-2] == "hello from the other side"
        assert json.loads(lines[-1]) == {"text": "hello from the other side"}
        assert "[plan] echoing 5 words for support" in out.stderr

        retrieval = Agent(b["retrieval-agent"], layout, env)
        try:
            retrieval.wait_serving()
            out = run_block(b["retrieval-ask"], layout, env)
        finally:
            assert retrieval.stop() == 0
        data = json.loads(out.stdout.strip().splitlines()[-1])
        assert len(data["sources"]) == 1
        assert data["text"] == ('Here is what I remember about "where is the staging database":\n'
                                "1. The staging database moved to eu-west-2 in March")
        assert out.stdout.startswith(data["text"])  # streamed token by token to stdout before the result
        assert "[search] searching the memories of support" in out.stderr
        assert "[recall] 1 memories found" in out.stderr
