"""Weights rewritten between calls. A backend that keeps derived copies of weights (packed layouts,
device copies) must notice every change torch can see: a fresh tensor that lands at the address of an
earlier one with the same version (a new torch.stack of the experts each training step), an
in-place update (its version moves), and new storage under the same tensor (`w.data = ...`, which
leaves the version alone). Each call is compared bit for bit with a run of the same
executable on private copies of the same values; run only when the whole graph is one executable of a
deterministic backend."""

from __future__ import annotations

import torch

from .checks import Outcome, same_bits


def check(out: Outcome, segments: list, inputs: dict, params: dict):
    names = [n for n, p in params.items() if p.is_floating_point() and p.dim() >= 2 and p.numel()]
    if len(segments) != 1 or not names:
        return
    exe = segments[0][1]

    def run(weights: dict) -> list:
        with torch.no_grad():
            return [o.clone() for o in exe.run(inputs, {**params, **weights})]

    def compare(what: str, weights: dict):
        differ = same_bits(run(weights), run({n: w.clone() for n, w in weights.items()}))
        if differ:
            names = ", ".join(exe.graph.outputs[i] for i in differ)
            out.fail("weights-changed", f"after {what}, {names} still follow the old weights")

    def after(what: str, weights: dict, change):
        run(weights)                    # these very tensors are the last the executable saw
        for w in weights.values():
            change(w)
        compare(what, weights)

    memory = {n: params[n].detach().clone() for n in names}
    run({n: torch.from_dlpack(m) for n, m in memory.items()})
    for m in memory.values():
        m.copy_(-m.flip(0))
    fresh = {n: torch.from_dlpack(m) for n, m in memory.items()}     # same address, version 0
    compare("new weights in a fresh tensor at the same address", fresh)
    after("an in-place update", fresh, lambda w: w.mul_(0.5))
    after("new storage under the same tensor (.data =)", fresh, lambda w: setattr(w, "data", w.flip(-1).clone()))
