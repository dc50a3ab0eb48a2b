import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synapse_server import SynapseServer  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; skipped in the ASan pass")


@pytest.fixture(scope="module")
def server():
    """One server per test module, relaxed limits, debug.crash enabled."""
    with SynapseServer(flags={"--debug-crash": "true"}) as s:
        yield s


@pytest.fixture
def fresh_server():
    """A server of the test's own; call it with flags to start it."""
    made = []

    def make(flags=None, relaxed=True, **kw):
        s = SynapseServer(flags=flags, relaxed=relaxed, **kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.cleanup()
