"""`portable-moe devices [--json]`: the devices here and, per backend, usable or why not."""

from __future__ import annotations

import argparse
import json

from .. import registry
from ..ir import DType
from ..knobs import help_text
from ..runtime import all_devices, select
from ..runtime.compile import options_for


def backend_row(name: str, devices) -> dict:
    try:
        backend = registry.load(name)
    except registry.BackendUnavailable as e:
        return {"name": name, "loaded": False, "reason": e.reason, "devices": {}}
    per_device = {}
    for d in devices:
        reason = backend.availability(d)
        if not backend.executes:
            reason = reason or f"{name}: compiles only, never executes"
        support = backend.support(d)
        schedule = None if reason else backend.schedule(d, options_for(backend))
        per_device[d.id] = {"usable": reason is None, "reason": reason, "ops": sorted(support.ops),
                            "declined": dict(support.declined), "schedule": schedule}
    return {"name": name, "loaded": True, "executes": backend.executes, "deterministic": backend.deterministic,
            "targets": list(backend.targets), "devices": per_device}


def collect() -> dict:
    devices = all_devices()
    backends = [backend_row(n, devices) for n in registry.backend_names()]
    selection = {}
    for d in devices:
        try:
            s = select(d, DType.float32)
            selection[d.id] = {"float32": s.winner, "ranked": s.ranked, "source": s.source}
        except Exception as e:  # noqa: BLE001 - a device no backend can run is reported, not fatal
            selection[d.id] = {"error": str(e)}
    return {"devices": [d.to_dict() for d in devices], "backends": backends, "selection": selection}


def add_parser(subparsers):
    p = subparsers.add_parser("devices", help="devices found; each backend: usable here or why not",
                              epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print("devices:")
    for d in info["devices"]:
        mem = f"{d['memory_bytes'] / 2**30:.0f} GiB" if d["memory_bytes"] else "?"
        print(f"  {d['id']:10} {d['vendor']:7} {d['name']} ({d['arch']}, {mem}, {d['driver']})")
    print("backends:")
    for b in info["backends"]:
        if not b["loaded"]:
            print(f"  {b['name']:12} unavailable: {b['reason']}")
            continue
        for dev, row in b["devices"].items():
            state = "usable" if row["usable"] else f"not usable: {row['reason']}"
            print(f"  {b['name']:12} {dev:10} {state}")
            if row["schedule"]:
                print(f"  {'':12} {'':10} schedule: {row['schedule']}")
    print("selection (float32):")
    for dev, s in info["selection"].items():
        print(f"  {dev:10} " + (s.get("error") or f"{s['float32']} ({s['source']}; ranked {', '.join(s['ranked'])})"))
    return 0
