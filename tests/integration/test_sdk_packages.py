"""The SDKs install into a fresh project exactly as their READMEs say (issue 17
item 4), and the installed copies work against the real server.

The install commands are not repeated here: they are read from the README
code blocks marked `<!-- sdk-install: NAME ... -->` (clients/js/README.md,
clients/python/README.md, and the same blocks in the top README.md, which
must match them word for word). Each block runs with bash in an empty
temporary directory, `/path/to/synapse` replaced by this repository; it
leaves the project in `my-app`. A tiny script then uses the installed SDK
(never the repository's sources): two clients connect, one joins a topic, the
other publishes, the first receives; a bad key is refused with the server's
own reason code and text.

npm reaches the npm registry for `phoenix` and `ws`; `npm_config_prefer_offline`
lets it use its cache first (the README commands themselves carry no such
flag). The Python venvs use Debian's websockets through
`--system-site-packages`, so pip downloads nothing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from synapse_server import SynapseServer

REPO = Path(__file__).resolve().parents[2]
PLACEHOLDER = "/path/to/synapse"
BLOCK = re.compile(r"<!-- sdk-install: ([\w-]+)[^>]*-->\n```sh\n(.*?)\n```", re.S)
READMES = {"js": REPO / "clients/js/README.md", "py": REPO / "clients/python/README.md"}
NAMES = ("js-tarball", "js-path", "py-wheel", "py-path")

pytestmark = pytest.mark.slow


def blocks(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, body in BLOCK.findall(path.read_text()):
        assert name not in found, f"{path}: two blocks named {name}"
        found[name] = body
    return found


def readme_block(name: str) -> str:
    found = blocks(READMES[name.split("-")[0]])
    assert name in found, f"{READMES[name.split('-')[0]]} has no `<!-- sdk-install: {name} -->` sh block"
    return found[name]


def install_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NODE_PATH", "VIRTUAL_ENV")}
    env.update(npm_config_prefer_offline="true", npm_config_audit="false", npm_config_fund="false",
               npm_config_update_notifier="false", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def run(args, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=install_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{args!r} in {cwd} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def sdk_server():
    with SynapseServer() as s:
        yield s


@pytest.fixture
def project_dir():
    d = Path(tempfile.mkdtemp(prefix="synapse-sdk-install-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


JS_APP = r"""
import WebSocket from 'ws';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { MimoSynapse } from '@mimo/synapse';

const [url, key, topic] = process.argv.slice(2);
const out = { resolved: realpathSync(fileURLToPath(import.meta.resolve('@mimo/synapse'))) };
const sub = new MimoSynapse(url, { apiKey: key, transport: WebSocket });
const pub = new MimoSynapse(url, { apiKey: key, transport: WebSocket });
await sub.connect();
await pub.connect();
const got = new Promise((resolve) => {
  const unsubscribe = sub.subscribe(topic, (msg) => resolve(msg), {});
  unsubscribe.ready.then(() => pub.publish(topic, 'hello', { text: 'from the installed SDK' }));
});
const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('no message within 10 s')), 10000));
const msg = await Promise.race([got, timeout]);
out.received = { event: msg.event, payload: msg.payload, offset: msg.meta.offset };
await sub.disconnect();
await pub.disconnect();

const bad = new MimoSynapse(url, { apiKey: 'syn_not_a_real_key', transport: WebSocket });
try {
  await bad.connect();
  out.refused = null;
} catch (e) {
  out.refused = { reason: e.reason, message: e.message, status: e.status };
}
bad.disconnect();
console.log(JSON.stringify(out));
process.exit(0);
"""

PY_APP = r"""
import asyncio, json, sys
import mimo_synapse
from mimo_synapse import AuthenticationError, MimoSynapse

url, key, topic = sys.argv[1:4]

async def main():
    out = {"resolved": mimo_synapse.__file__}
    got = asyncio.Queue()
    async with MimoSynapse(url, api_key=key) as sub, MimoSynapse(url, api_key=key) as pub:
        await sub.subscribe(topic, got.put_nowait)
        offset = await pub.publish(topic, "hello", {"text": "from the installed SDK"})
        msg = await asyncio.wait_for(got.get(), 10)
        out["received"] = {"event": msg.event, "payload": msg.payload, "offset": msg.offset, "published": offset}
    bad = MimoSynapse(url, api_key="syn_not_a_real_key")
    try:
        await asyncio.wait_for(bad.connect(), 10)
        out["refused"] = None
    except AuthenticationError as e:
        out["refused"] = {"reason": e.reason, "message": e.message, "status": e.status}
    finally:
        await bad.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_top_readme_shows_the_sdk_readmes_install_commands_word_for_word():
    top = blocks(REPO / "README.md")
    for name in NAMES:
        assert name in top, f"README.md has no `<!-- sdk-install: {name} -->` sh block"
        assert top[name] == readme_block(name), f"README.md and {READMES[name[:2]]} disagree on {name}"
    for name in NAMES:
        text = readme_block(name)
        assert "@mimo/synapse" not in text.replace("mimo-synapse", ""), "the registry name is not installable"


def test_make_sdk_writes_the_tarball_and_the_wheel():
    run(["make", "-C", str(REPO), "sdk"], REPO, 120)
    assert (REPO / "build/sdk/mimo-synapse-0.1.0.tgz").is_file()
    assert (REPO / "build/sdk/mimo_synapse-0.1.0-py3-none-any.whl").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_readme_install_gives_a_working_sdk(name, sdk_server, project_dir):
    script = readme_block(name).replace(PLACEHOLDER, str(REPO))
    run(["bash", "-euo", "pipefail", "-c", script], project_dir, 180)
    app = project_dir / "my-app"
    assert app.is_dir(), f"the {name} block leaves no my-app project"

    key = sdk_server.create_key(f"pkg-{name}")
    topic = f"room:pkg-{name}"
    if name.startswith("js"):
        (app / "app.mjs").write_text(JS_APP)
        p = run(["node", "app.mjs", sdk_server.ws_url.removesuffix("/websocket"), key, topic], app, 60)
        installed_under = app / "node_modules"
    else:
        (app / "app.py").write_text(PY_APP)
        p = run([str(app / ".venv/bin/python"), "app.py", f"ws://127.0.0.1:{sdk_server.port}", key, topic], app, 60)
        installed_under = app / ".venv"
    out = json.loads(p.stdout.strip().splitlines()[-1])

    # The installed copy ran, not the repository's sources (nor a link to them).
    assert Path(out["resolved"]).is_relative_to(installed_under.resolve()), out["resolved"]
    assert out["received"]["event"] == "hello"
    assert out["received"]["payload"] == {"text": "from the installed SDK"}
    assert isinstance(out["received"]["offset"], int)
    if "published" in out["received"]:
        assert out["received"]["offset"] == out["received"]["published"]
    refused = out["refused"]
    assert refused is not None, "connect with a bad key must raise/reject"
    assert refused["status"] == 401 and refused["reason"] == "unauthorized", refused
    # the server's own text, not a placeholder of the SDK
    assert refused["message"] and refused["message"] != "unauthorized" and "HTTP 401" not in refused["message"], refused
