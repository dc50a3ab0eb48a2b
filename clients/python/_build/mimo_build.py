"""A minimal PEP 517/660 build backend using only the standard library:
builds the pure-Python wheel, sdist and editable wheel of mimo-synapse
without downloading anything (``requires = []`` in pyproject.toml)."""
from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]


def _project() -> Dict[str, Any]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib  # Python 3.11+
        data = tomllib.loads(text)
        return {**data["project"], "packages": data.get("tool", {}).get("mimo-build", {}).get("packages", [])}
    except ImportError:  # pragma: no cover - older Pythons: the few fields we need
        def field(name: str) -> str:
            m = re.search(rf'^{name}\s*=\s*"([^"]*)"', text, re.M)
            return m.group(1) if m else ""
        deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.M | re.S)
        pkgs = re.search(r"^packages\s*=\s*\[(.*?)\]", text, re.M | re.S)
        return {"name": field("name"), "version": field("version"), "description": field("description"),
                "requires-python": field("requires-python"), "readme": field("readme"),
                "dependencies": re.findall(r'"([^"]+)"', deps.group(1)) if deps else [],
                "packages": re.findall(r'"([^"]+)"', pkgs.group(1)) if pkgs else []}


def _names() -> Tuple[Dict[str, Any], str, str]:
    p = _project()
    dist = re.sub(r"[-_.]+", "_", p["name"]).lower()
    return p, dist, p["version"]


def _metadata(p: Dict[str, Any]) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {p['version']}",
             f"Summary: {p.get('description', '')}"]
    if p.get("requires-python"):
        lines.append(f"Requires-Python: {p['requires-python']}")
    lines += [f"Requires-Dist: {d}" for d in p.get("dependencies", [])]
    for c in p.get("classifiers", []):
        lines.append(f"Classifier: {c}")
    body = ""
    if p.get("readme"):
        lines.append("Description-Content-Type: text/markdown")
        body = (ROOT / p["readme"]).read_text(encoding="utf-8")
    return "\n".join(lines) + "\n\n" + body


def _package_files(p: Dict[str, Any]) -> List[Path]:
    out: List[Path] = []
    for pkg in p["packages"]:
        for path in sorted((ROOT / pkg).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.append(path)
    return out


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def _write_wheel(directory: str, files: List[Tuple[str, bytes]]) -> str:
    p, dist, version = _names()
    info = f"{dist}-{version}.dist-info"
    files = files + [
        (f"{info}/METADATA", _metadata(p).encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: mimo_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    record = [_record_line(name, data) for name, data in files] + [f"{info}/RECORD,,"]
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    name = f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in files:
            zf.writestr(zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0)), data,
                        compress_type=zipfile.ZIP_DEFLATED)
    return name


# -- PEP 517 ----------------------------------------------------------------
def get_requires_for_build_wheel(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_sdist(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_editable(config_settings: Optional[dict] = None) -> List[str]:
    return []


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Optional[dict] = None) -> str:
    p, dist, version = _names()
    info = Path(metadata_directory) / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(_metadata(p), encoding="utf-8")
    return info.name


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory: str, config_settings: Optional[dict] = None,
                metadata_directory: Optional[str] = None) -> str:
    p = _project()
    files = [(path.relative_to(ROOT).as_posix(), path.read_bytes()) for path in _package_files(p)]
    return _write_wheel(wheel_directory, files)


def build_editable(wheel_directory: str, config_settings: Optional[dict] = None,
                   metadata_directory: Optional[str] = None) -> str:
    _, dist, _ = _names()
    return _write_wheel(wheel_directory, [(f"{dist}.pth", (str(ROOT) + "\n").encode())])


def build_sdist(sdist_directory: str, config_settings: Optional[dict] = None) -> str:
    p, dist, version = _names()
    base = f"{dist}-{version}"
    name = f"{base}.tar.gz"
    paths = [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "_build" / "mimo_build.py"]
    paths += _package_files(p)
    paths += sorted(x for x in (ROOT / "tests").glob("*.py"))
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for path in paths:
            tf.add(str(path), arcname=f"{base}/{path.relative_to(ROOT).as_posix()}")
        pkg_info = _metadata(p).encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size = len(pkg_info)
        tf.addfile(ti, io.BytesIO(pkg_info))
    return name
