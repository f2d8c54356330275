"""The versioned JSON form of a graph. Reading checks every field; writing is canonical, so
`to_json(from_json(s)) == s` for anything `to_json` wrote."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import IRError
from .graph import Graph, Node, Value
from .types import TensorType, parse_dtype
from .verify import verify

FORMAT = "portable_moe.ir"
VERSION = 1


def type_to_dict(t: TensorType) -> dict:
    return {"dtype": t.dtype.value, "shape": list(t.shape)}


def value_to_dict(v: Value) -> dict:
    return {"name": v.name, **type_to_dict(v.type)}


def to_dict(graph: Graph) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": graph.name,
        "inputs": [value_to_dict(v) for v in graph.inputs],
        "params": [value_to_dict(v) for v in graph.params],
        "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs),
                   "outputs": [value_to_dict(v) for v in n.outputs], "attrs": dict(n.attrs)}
                  for n in graph.nodes],
        "outputs": list(graph.outputs),
    }


def to_json(graph: Graph) -> str:
    return json.dumps(to_dict(graph), indent=1) + "\n"


def expect(obj, kind, where: str):
    if not isinstance(obj, kind) or (kind is not bool and isinstance(obj, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise IRError(f"{where}: expected {names}, got {type(obj).__name__} {json.dumps(obj)[:60]}")
    return obj


def expect_keys(obj: dict, required: set, optional: set, where: str):
    missing = required - obj.keys()
    if missing:
        raise IRError(f"{where}: missing field(s) {sorted(missing)}")
    unknown = obj.keys() - required - optional
    if unknown:
        raise IRError(f"{where}: unknown field(s) {sorted(unknown)}")


def value_from_dict(obj, where: str) -> Value:
    expect(obj, dict, where)
    expect_keys(obj, {"name", "dtype", "shape"}, set(), where)
    name = expect(obj["name"], str, f"{where}.name")
    shape = expect(obj["shape"], list, f"{where} '{name}' shape")
    dims = tuple(expect(d, (int, str), f"{where} '{name}' dim") for d in shape)
    try:
        return Value(name, TensorType(parse_dtype(expect(obj["dtype"], str, f"{where}.dtype")), dims))
    except IRError as e:
        raise IRError(f"{where} '{name}': {e.problem}") from None


def node_from_dict(obj, i: int) -> Node:
    where = f"nodes[{i}]"
    expect(obj, dict, where)
    expect_keys(obj, {"name", "op", "inputs", "outputs"}, {"attrs"}, where)
    name = expect(obj["name"], str, f"{where}.name")
    op = expect(obj["op"], str, f"{where}.op")
    inputs = [expect(x, (str, type(None)), f"node '{name}' input") for x in expect(obj["inputs"], list, where)]
    outputs = [value_from_dict(v, f"node '{name}' output") for v in expect(obj["outputs"], list, where)]
    attrs = expect(obj.get("attrs", {}), dict, f"node '{name}' attrs")
    for k, v in attrs.items():
        expect(v, (int, float, str, bool, type(None)), f"node '{name}' attribute '{k}'")
    return Node(name, op, inputs, outputs, attrs)


def from_dict(obj) -> Graph:
    expect(obj, dict, "IR file")
    expect_keys(obj, {"format", "version", "name", "inputs", "params", "nodes", "outputs"}, set(), "IR file")
    if obj["format"] != FORMAT:
        raise IRError(f"format is {obj['format']!r}, expected {FORMAT!r}")
    if type(obj["version"]) is not int or obj["version"] != VERSION:
        raise IRError(f"IR version {json.dumps(obj['version'])[:40]} is not supported (this build reads version "
                      f"{VERSION})")
    graph = Graph(
        name=expect(obj["name"], str, "name"),
        inputs=[value_from_dict(v, f"inputs[{i}]") for i, v in enumerate(expect(obj["inputs"], list, "inputs"))],
        params=[value_from_dict(v, f"params[{i}]") for i, v in enumerate(expect(obj["params"], list, "params"))],
        nodes=[node_from_dict(n, i) for i, n in enumerate(expect(obj["nodes"], list, "nodes"))],
        outputs=[expect(o, str, "outputs[]") for o in expect(obj["outputs"], list, "outputs")],
    )
    return verify(graph)


def parse_json(text: str | bytes):
    """json.loads with one-line errors, including for nesting too deep for the parser."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise IRError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise IRError("not valid JSON: nested too deeply") from None
    except UnicodeDecodeError as e:
        raise IRError(f"not valid JSON: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:       # e.g. an integer of more digits than Python converts
        raise IRError(f"not valid JSON: {str(e).split(';')[0]}") from None


def from_json(text: str) -> Graph:
    return from_dict(parse_json(text))


MAX_FILE_BYTES = 1 << 30


def read_bounded(path: str | Path, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes (never a FIFO or device, which could block), at most limit of them."""
    path = Path(path)
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise IRError(f"{what} {path} is not a regular file")
            if st.st_size > limit:
                raise IRError(f"{what} {path} is {st.st_size} bytes, more than the {limit} read")
            return f.read(limit + 1)[:limit]
    except OSError as e:
        raise IRError(f"cannot read {what} {path}: {e.strerror or e}") from None


def load(path: str | Path) -> Graph:
    data = read_bounded(path, "IR file")
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise IRError(f"cannot read IR file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return from_json(text)
    except IRError as e:
        raise IRError(f"{path}: {e}") from None


def save(graph: Graph, path: str | Path):
    Path(path).write_text(to_json(graph))
