"""Mutations of JSON documents for the fuzz tests: every path into a document, and one edit at a path."""

from __future__ import annotations

import json


def paths(obj, prefix=()):
    """Every path (a tuple of keys and indices) into obj, the empty path (the whole document) first."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))


def mutate(obj, path, action: str, junk):
    """obj with the value at path replaced by junk, deleted, or (in a list) duplicated; obj is changed."""
    if not path:
        return junk
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    if action == "replace":
        parent[path[-1]] = junk
    elif action == "delete":
        del parent[path[-1]]
    elif action == "duplicate" and isinstance(parent, list):
        parent.insert(path[-1], json.loads(json.dumps(parent[path[-1]])))
    return obj
