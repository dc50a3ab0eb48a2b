#!/usr/bin/env python3
"""docs/architecture.md's layer table must be the graph src/CMakeLists.txt builds.

Reads every synapse_layer(...) call (directories, PUBLIC and PRIVATE links to
other layers; third-party targets, spelled with ::, are left out) and every
row of the table under "## Layers", and exits 1 naming each difference.
Usage: check_docs_table.py <repository root>
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
cmake = (root / "src/CMakeLists.txt").read_text()
docs = (root / "docs/architecture.md").read_text()


def layer(name):
    return name.removeprefix("synapse_")


built = {}
for name, body in re.findall(r"synapse_layer\((synapse_\w+)\s(.*?)\)", cmake, re.S):
    sections = {"DIRS": [], "SOURCES": [], "PUBLIC": [], "PRIVATE": []}
    current = None
    for token in body.split():
        if token in sections:
            current = token
        elif current and "::" not in token:
            sections[current].append(token)
    built[layer(name)] = (
        frozenset(sections["DIRS"]),
        frozenset(layer(t) for t in sections["PUBLIC"]),
        frozenset(layer(t) for t in sections["PRIVATE"]),
    )


def links(cell):
    cell = cell.strip()
    if cell in ("—", "third-party only"):
        return frozenset()
    return frozenset(part.strip().split()[0] for part in cell.split(","))


documented = {}
for line in docs.splitlines():
    m = re.match(r"\| `(synapse_\w+)` \|(.*)\|\s*$", line)
    if not m or m.group(1) == "synapse_core":
        continue
    dirs, public, private = m.group(2).split("|")
    documented[layer(m.group(1))] = (
        frozenset(d.strip("/") for d in re.findall(r"`([^`]+)`", dirs)),
        links(public),
        links(private),
    )

problems = []
if not built:
    problems.append("no synapse_layer(...) call found in src/CMakeLists.txt")
for name in sorted(built.keys() | documented.keys()):
    if name not in documented:
        problems.append(f"synapse_{name} is built but not in the docs table")
    elif name not in built:
        problems.append(f"synapse_{name} is in the docs table but not built")
    elif built[name] != documented[name]:
        problems.append(f"synapse_{name}: CMake {sorted(map(sorted, built[name]))} "
                        f"!= docs {sorted(map(sorted, documented[name]))}")
for p in problems:
    print(p)
print("layer table matches CMake" if not problems else f"{len(problems)} difference(s)")
sys.exit(1 if problems else 0)
