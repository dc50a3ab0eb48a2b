"""Fixtures for the SDK tests: the real synapse binary ($SYNAPSE_BIN or
build/release/synapse) started through tests/harness/synapse_server.py."""
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
for p in (REPO / "tests" / "harness", HERE.parent, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from synapse_server import SynapseServer  # noqa: E402

# History of 500 messages so the no-loss test never depends on how long its
# cut lasts; token warnings 2 s before exp so 3 s tokens refresh quickly.
SHARED_FLAGS = {"--history-size": "500", "--token-warning-s": "2"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; skipped in the ASan pass")


@pytest.fixture(scope="session")
def server() -> Iterator[SynapseServer]:
    """One server for the whole session (relaxed limits)."""
    with SynapseServer(flags=dict(SHARED_FLAGS)) as s:
        yield s


@pytest.fixture
def fresh_server() -> Iterator[Callable[..., SynapseServer]]:
    """A server of the test's own (for tests that kill it)."""
    made: List[SynapseServer] = []

    def make(flags=None, **kw) -> SynapseServer:
        s = SynapseServer(flags={**SHARED_FLAGS, **(flags or {})}, **kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.cleanup()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_key(server: SynapseServer) -> Callable[..., str]:
    """make_key("alice") -> a fresh API key whose agent is a unique name."""
    def make(prefix: str = "agent", *flags: str) -> str:
        return server.create_key(unique(prefix), *flags)
    return make


@pytest.fixture
def make_agent(server: SynapseServer) -> Callable[..., tuple]:
    """make_agent("bob") -> (agent_id, api_key)."""
    def make(prefix: str = "agent", *flags: str) -> tuple:
        name = unique(prefix)
        return name, server.create_key(name, *flags)
    return make
