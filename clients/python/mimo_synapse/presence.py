"""Phoenix Presence state synchronisation (``presence_state`` and
``presence_diff``), the same algorithm as phoenix.js ``Presence.syncState`` /
``Presence.syncDiff``.

A state maps a presence key (the agent id) to ``{"metas": [meta, ...]}``; each
meta carries a unique ``phx_ref`` (one per connection)."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping

PresenceState = Dict[str, Dict[str, Any]]


def _metas(entry: Any) -> List[Dict[str, Any]]:
    if isinstance(entry, Mapping) and isinstance(entry.get("metas"), list):
        return [dict(m) for m in entry["metas"] if isinstance(m, Mapping)]
    return []


def sync_state(new_state: Mapping[str, Any]) -> PresenceState:
    """The state after a ``presence_state`` push (it replaces the old one)."""
    return {str(k): {**copy.deepcopy(dict(v)), "metas": _metas(v)}
            for k, v in new_state.items() if isinstance(v, Mapping)}


def sync_diff(state: PresenceState, diff: Mapping[str, Any]) -> PresenceState:
    """Applies a ``presence_diff`` ``{"joins", "leaves"}`` to ``state`` in place
    (joins first, then leaves) and returns it."""
    joins = diff.get("joins")
    leaves = diff.get("leaves")
    for key, entry in (joins.items() if isinstance(joins, Mapping) else []):
        if not isinstance(entry, Mapping):
            continue
        new_metas = _metas(entry)
        current = state.get(key)
        if current:
            joined_refs = {m.get("phx_ref") for m in new_metas}
            kept = [m for m in current.get("metas", []) if m.get("phx_ref") not in joined_refs]
            new_metas = kept + new_metas
        state[key] = {**copy.deepcopy(dict(entry)), "metas": new_metas}
    for key, entry in (leaves.items() if isinstance(leaves, Mapping) else []):
        current = state.get(key)
        if not current:
            continue
        left_refs = {m.get("phx_ref") for m in _metas(entry)}
        current["metas"] = [m for m in current.get("metas", []) if m.get("phx_ref") not in left_refs]
        if not current["metas"]:
            del state[key]
    return state


__all__ = ["PresenceState", "sync_state", "sync_diff"]
