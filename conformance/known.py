"""Known failures as data: known_failures/<backend>.json lists, per backend, the cases it is known to
fail and why. A failure that matches an entry is reported as 'xfail' with the reason (never skipped:
the case still runs); an entry that matched nothing in a run is reported as stale."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from ..ir import PortableMoeError

KNOWN_DIR = Path(__file__).parent / "known_failures"
FIELDS = ("op", "dtype", "device", "case", "check")


class ConformanceError(PortableMoeError):
    """A conformance input (known-failures file, backend, dtype, op name) is malformed or unknown."""


@dataclass(frozen=True)
class KnownFailure:
    reason: str
    op: str = "*"
    dtype: str = "*"
    device: str = "*"        # device kind (cpu, cuda, opencl, ...) or id; glob
    case: str = "*"          # glob over the case name, e.g. "edge:nan" or "*tile-edge*"
    check: str = "*"         # the failing check, e.g. "backward"

    def matches(self, op: str, dtype: str, device: str, case: str, checks: list[str]) -> bool:
        return (fnmatchcase(op, self.op) and fnmatchcase(dtype, self.dtype) and fnmatchcase(case, self.case)
                and (fnmatchcase(device, self.device) or fnmatchcase(device.split(":")[0], self.device))
                and bool(checks) and all(fnmatchcase(c, self.check) for c in checks))

    def to_dict(self) -> dict:
        return asdict(self)


def load_known(backend: str, directory: Path = KNOWN_DIR) -> list[KnownFailure]:
    path = Path(directory) / f"{backend}.json"
    if not path.exists():
        return []
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConformanceError(f"{path}: cannot read known failures ({e})") from None
    entries = obj.get("known_failures") if isinstance(obj, dict) else None
    if not isinstance(entries, list):
        raise ConformanceError(f'{path}: expected {{"backend": "{backend}", "known_failures": [...]}}')
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not str(e.get("reason", "")).strip():
            raise ConformanceError(f"{path}: entry {i} needs a non-empty 'reason'")
        unknown = set(e) - set(FIELDS) - {"reason"}
        if unknown:
            raise ConformanceError(f"{path}: entry {i} has unknown field(s) {sorted(unknown)}; known: "
                                   f"{', '.join(FIELDS)}, reason")
        out.append(KnownFailure(**{k: str(v) for k, v in e.items()}))
    return out
