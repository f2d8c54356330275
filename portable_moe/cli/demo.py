"""`portable-moe demo`: the main job on the embedded default model, every capability in a few lines."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from .. import compile as compile_model
from .. import registry
from ..ir import Graph, PortableMoeError, to_json
from ..ir.meanings import run_graph
from ..models import build_model, build_moe_layer, init_params, preset
from ..runtime import all_devices, resolve_device
from ..runtime.tolerance import global_error
from . import demo_sections

DEFAULT_MODEL = "debug"
DEVICE_KINDS = ("cpu", "cuda", "rocm", "hip", "xpu", "mps", "opencl")


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="the main job on an embedded default model")
    p.add_argument("--device", help="device to run on (default: PORTABLE_MOE_DEVICE, else the first found)")
    p.add_argument("--backend", help="backend to run with (default: PORTABLE_MOE_BACKEND, else automatic)")
    p.add_argument("--out", help="keep the artifacts (HTML matrix, plots, compiled files) in this directory "
                                 "(default: a temporary directory, removed at the end)")
    p.add_argument("--skip", action="append", default=[], choices=demo_sections.NAMES,
                   help="leave out a section (repeatable)")
    p.set_defaults(func=run)


def heading(title: str):
    print(f"\n== {title}")


def show_model(graph, params):
    cfg = preset(DEFAULT_MODEL)
    weights = sum(p.numel() for p in params.values())
    print(f"model '{cfg.name}': {cfg.layers} layers, {cfg.experts} experts top-{cfg.top_k}, hidden {cfg.hidden}; "
          f"IR: {len(graph.nodes)} nodes over {len(graph.ops())} ops, {len(params)} params ({weights:,} weights), "
          f"{len(to_json(graph)):,} bytes of IR JSON")


def show_devices(device):
    devices = all_devices()
    print("devices: " + "; ".join(f"{d.id} {d.name} ({d.arch})" for d in devices))
    for name in registry.backend_names():
        try:
            b = registry.load(name)
            state = b.availability(device) or ("usable" if b.executes else "compiles only")
        except registry.BackendUnavailable as e:
            state = e.reason
        print(f"  {name:12} on {device.id}: {state}")


def run_main(graph, params, device, backend):
    """The main job: compile on the selected backend, run, check against the float64 reference."""
    layer = build_moe_layer(preset(DEFAULT_MODEL))
    ids = torch.randint(0, preset(DEFAULT_MODEL).vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    model = compile_model(graph, params, device=device, backend=backend)
    compiled = time.perf_counter() - t0
    with torch.no_grad():
        t0 = time.perf_counter()
        logits = model(ids)
        ran = time.perf_counter() - t0
    want, = run_graph(graph, {"ids": ids}, {k: v.double() for k, v in params.items()})
    print(model.why())
    err = (logits.double().cpu() - want).abs().max().item()
    print(f"ran ids[2, 16] -> logits{list(logits.shape)} in {ran * 1e3:.1f} ms (compile {compiled:.1f} s); "
          f"vs float64 reference: max |diff| {err:.2e}, global error {global_error(logits.cpu(), want):.1e}")
    same = routing_agrees(layer, device, model.selection.winner)
    print(f"routing of a {preset(DEFAULT_MODEL).name} MoE layer on {model.selection.winner}: "
          f"{'same experts as the reference for every token' if same else 'DIFFERENT experts from the reference'}")
    return model


def routing_agrees(layer, device, backend) -> bool:
    params = init_params(layer, seed=1)
    x = torch.randn(64, preset(DEFAULT_MODEL).hidden, generator=torch.Generator().manual_seed(2))
    env: dict = {}
    run_graph(layer, {"x": x.double()}, {k: v.double() for k, v in params.items()}, env)
    probe = layer.nodes[0]
    router_only = Graph("router", layer.inputs, [p for p in layer.params if p.name.startswith("router")], [probe],
                        [probe.outputs[1].name])
    model = compile_model(router_only, {k: v for k, v in params.items() if k.startswith("router")}, device=device,
                          backend=backend)
    with torch.no_grad():
        return torch.equal(model(x).cpu(), env[probe.outputs[1].name])


def run_section(section, **kwargs) -> bool:
    """Runs one section; whatever stops it is one line, never a traceback. False when it failed."""
    try:
        section.run(**kwargs)
    except ImportError as e:             # an optional component this machine lacks: a reason, not a failure
        print(f"not here: {e.name or 'a module'} is not importable ({str(e).splitlines()[0]})")
    except PortableMoeError as e:
        print(f"FAILED: {e}")
        return False
    except Exception as e:  # noqa: BLE001 - the demo reports every section, whatever broke in one
        print(f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return False
    return True


def checked_backend(name: str | None, device) -> str | None:
    """The --backend argument, refused before any output when it names no backend or one that cannot run
    on the device."""
    if name is None:
        return None
    if name not in registry.backend_names():
        hint = f" ('{name}' is a device: pass --device {name})" if name.split(":")[0] in DEVICE_KINDS else ""
        raise PortableMoeError(f"--backend: unknown backend '{name}'; known backends: "
                               f"{', '.join(registry.backend_names())}{hint}")
    reason = registry.load(name).availability(device)
    if reason:
        raise PortableMoeError(f"--backend {name} cannot run on {device.id}: {reason}")
    return name


def run(args) -> int:
    device = resolve_device(args.device)
    backend = checked_backend(args.backend, device)
    if args.out:
        return run_into(Path(args.out), device, backend, args.skip, keep=True)
    with tempfile.TemporaryDirectory(prefix="portable-moe-demo-") as tmp:
        return run_into(Path(tmp), device, backend, args.skip, keep=False)


def run_into(out: Path, device, backend: str | None, skip: list[str], keep: bool) -> int:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    graph = build_model(preset(DEFAULT_MODEL))
    params = init_params(graph, seed=0)
    heading("model")
    show_model(graph, params)
    heading(f"devices and backends (this run: {device.id})")
    show_devices(device)
    heading("run on the selected backend, checked against the float64 reference")
    run_main(graph, params, device, backend)      # what the user asked for: its errors end the demo
    failed = []
    for name, section in demo_sections.SECTIONS.items():
        if name in skip:
            continue
        heading(section.title)
        if not run_section(section, graph=graph, params=params, device=device, out=out / name):
            failed.append(name)
    heading("done")
    kept = f"artifacts in {out}" if keep else "artifacts removed (pass --out DIR to keep them)"
    print(f"{kept}; {time.perf_counter() - started:.0f} s in all"
          + (f"; failed sections: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
