"""Fixtures for the SDK tests: the real synapse binary ($SYNAPSE_BIN or
build/release/synapse) started through tests/harness/synapse_server.py."""
import asyncio
import functools
import inspect
import sys
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
for p in (REPO / "tests" / "harness", HERE.parent, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from synapse_server import SynapseServer  # noqa: E402
from sdk_helpers import unique  # noqa: E402

# History of 500 messages so the no-loss test never depends on how long its
# cut lasts; token warnings 2 s before exp so 3 s tokens refresh quickly.
SHARED_FLAGS = {"--history-size": "500", "--token-warning-s": "2"}


# Every async test is cancelled (and fails) after this long, so an SDK that
# hangs makes a test fail instead of stalling the suite.
ASYNC_TEST_TIMEOUT_S = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; skipped in the ASan pass")


def _bounded(fn):
    @functools.wraps(fn)
    async def run(*args, **kwargs):
        task = asyncio.ensure_future(fn(*args, **kwargs))
        done, _ = await asyncio.wait({task}, timeout=ASYNC_TEST_TIMEOUT_S)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=10)
            pytest.fail(f"test did not finish within {ASYNC_TEST_TIMEOUT_S:g}s (hung?)")
        return task.result()
    return run


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        if item.get_closest_marker("asyncio") is not None and inspect.iscoroutinefunction(fn):
            item.obj = _bounded(fn)


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
