"""Placement type, load/placement JSON I/O, validation and the time cost model.

Shapes: L layers, E experts, D devices, N nodes, R replicas of one layer.
Cost model: a device's time in a layer = tokens routed to it / its throughput; a layer takes the max over
devices; the fluid lower bound of a layer = sum of its tokens / sum of throughputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cluster import LINK_CLASSES, BalanceError, Cluster, check_expert_bytes, finite_number, read_json
from .comm import DEFAULT_TOKEN_BYTES
from .memory import LAYOUTS, memory_use
from .solver import device_time

SHARE_TOL = 1e-6
MAX_EXPERTS = 1 << 20
MAX_LOAD = 1e18  # token copies per expert and layer: sums over experts and layers stay finite


@dataclass
class LayerPlacement:
    """Replicas of one layer: device [R] int, expert [R] int, share [R] float, by_node [R, N] or None."""

    device: np.ndarray
    expert: np.ndarray
    share: np.ndarray
    by_node: np.ndarray | None = None


@dataclass
class Placement:
    layers: list[LayerPlacement]
    num_experts: int
    expert_bytes: int
    moved_bytes: int = 0
    predicted: dict = field(default_factory=dict)
    layout: str = "pooled"

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def dense(self, num_devices: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (count [L, E, D] int replicas per (expert, device), share [L, E, D] float summed shares)."""
        shape = (self.num_layers, self.num_experts, num_devices)
        count, share = np.zeros(shape, np.int64), np.zeros(shape)
        for i, lp in enumerate(self.layers):
            np.add.at(count[i], (lp.expert, lp.device), 1)
            np.add.at(share[i], (lp.expert, lp.device), lp.share)
        return count, share

    def dense_by_node(self, cluster: Cluster) -> np.ndarray:
        """-> by_node [L, E, D, N] (every layer must carry by_node)."""
        out = np.zeros((self.num_layers, self.num_experts, cluster.num_devices, cluster.num_nodes))
        for i, lp in enumerate(self.layers):
            np.add.at(out[i], (lp.expert, lp.device), lp.by_node)
        return out

    def counts(self, num_devices: int) -> np.ndarray:
        """[L, D] replicas per layer and device."""
        return np.array([np.bincount(lp.device, minlength=num_devices) for lp in self.layers])

    def memory(self, cluster: Cluster) -> dict:
        return memory_use(self.counts(cluster.num_devices), [d.memory_bytes for d in cluster.devices],
                          self.expert_bytes)

    def to_json(self) -> dict:
        layers = []
        for lp in self.layers:
            reps = []
            for r in range(len(lp.device)):
                rep = {"device": int(lp.device[r]), "expert": int(lp.expert[r]), "share": float(lp.share[r])}
                if lp.by_node is not None:
                    rep["by_node"] = {str(n): float(v) for n, v in enumerate(lp.by_node[r]) if v > 0}
                reps.append(rep)
            layers.append({"replicas": reps})
        return {
            "layers": layers,
            "num_experts": self.num_experts,
            "expert_bytes": self.expert_bytes,
            "moved_bytes": int(self.moved_bytes),
            "layout": self.layout,
            "predicted": self.predicted,
        }


def placement_from_dense(
    host: np.ndarray, share: np.ndarray, by_node: np.ndarray | None, expert_bytes: int, layout: str = "pooled"
) -> Placement:
    """host [L, E, D] bool, share [L, E, D], by_node [L, E, D, N] or None -> Placement (sorted by device)."""
    layers = []
    for i in range(host.shape[0]):
        d, e = np.nonzero(host[i].T)
        bn = None if by_node is None else by_node[i, e, d]
        layers.append(LayerPlacement(d.astype(np.int64), e.astype(np.int64), share[i, e, d], bn))
    return Placement(layers, host.shape[1], int(expert_bytes), layout=layout)


# ----------------------------------------------------------------------------------------------- loads


def validate_loads(loads) -> np.ndarray:
    """Any [L, E] array-like -> float64 [L, E]; raises BalanceError naming a NaN/negative layer and expert."""
    try:
        arr = np.asarray(loads, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as e:
        raise BalanceError(f"load: not a numeric layers x experts array of floats ({str(e)[:80]})") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BalanceError(f"load: expected shape layers x experts, got shape {arr.shape}")
    for bad, what in ((~np.isfinite(arr), "NaN or infinite"), (arr < 0, "negative"),
                      (arr > MAX_LOAD, f"too large (over {MAX_LOAD:g})")):
        if bad.any():
            layer, expert = np.argwhere(bad)[0]
            raise BalanceError(f"load: {what} value {arr[layer, expert]} at layer {layer}, expert {expert}")
    return arr


def load_loads(path) -> np.ndarray:
    """Read `{"load": [[...], ...]}` JSON or a .npy [L, E] file."""
    if str(path).endswith(".npy"):
        try:
            return validate_loads(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise BalanceError(f"load: cannot read {path}: {e}") from None
    obj = read_json(path, "load")
    if not isinstance(obj, dict) or set(obj) != {"load"}:
        raise BalanceError("load: expected a JSON object with exactly one field 'load'")
    return validate_loads(obj["load"])


# ----------------------------------------------------------------------------------------- placements


def _replica_from_json(layer: int, r: int, obj) -> tuple[int, int, float, dict | None]:
    where = f"placement layer {layer} replica {r}"
    if not isinstance(obj, dict):
        raise BalanceError(f"{where}: expected an object")
    unknown = sorted(set(obj) - {"device", "expert", "share", "by_node"})
    if unknown:
        raise BalanceError(f"{where}: unknown field {unknown[0]!r}")
    for f in ("device", "expert", "share"):
        if f not in obj:
            raise BalanceError(f"{where}: missing field {f!r}")
    dev, exp, share = obj["device"], obj["expert"], obj["share"]
    for f, v in (("device", dev), ("expert", exp)):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < MAX_EXPERTS:
            raise BalanceError(f"{where}: {f!r} must be an integer from 0 to {MAX_EXPERTS - 1}, got {str(v)[:40]}")
    if not finite_number(share, 0, 1 + SHARE_TOL):
        raise BalanceError(f"{where}: 'share' must be a number from 0 to 1, got {str(share)[:40]}")
    bn = obj.get("by_node")
    if bn is not None and not isinstance(bn, dict):
        raise BalanceError(f"{where}: 'by_node' must be an object of node -> fraction")
    return dev, exp, float(share), bn


def _layer_from_json(i: int, obj, num_nodes: int) -> LayerPlacement:
    if not isinstance(obj, dict) or not isinstance(obj.get("replicas"), list):
        raise BalanceError(f"placement layer {i}: expected an object with a 'replicas' list")
    rows = [_replica_from_json(i, r, x) for r, x in enumerate(obj["replicas"])]
    if not rows:
        raise BalanceError(f"placement layer {i}: no replicas")
    dev = np.array([x[0] for x in rows], np.int64)
    exp = np.array([x[1] for x in rows], np.int64)
    share = np.array([x[2] for x in rows])
    by_node = None
    if any(x[3] is not None for x in rows):
        by_node = np.zeros((len(rows), num_nodes))
        for r, x in enumerate(rows):
            for k, v in (x[3] or {}).items():
                if not k.isdigit() or len(k) > 6 or int(k) >= num_nodes or not finite_number(v, 0, 1 + SHARE_TOL):
                    raise BalanceError(
                        f"placement layer {i} replica {r}: bad by_node entry {k[:20]!r}: {str(v)[:40]} "
                        f"(node index below {num_nodes} -> fraction from 0 to 1)")
                by_node[r, int(k)] = v
    return LayerPlacement(dev, exp, share, by_node)


def placement_from_json(obj, cluster: Cluster) -> Placement:
    """Parse and validate a placement JSON object against `cluster`."""
    if not isinstance(obj, dict):
        raise BalanceError("placement: expected a JSON object")
    for f in ("layers", "num_experts", "expert_bytes"):
        if f not in obj:
            raise BalanceError(f"placement: missing field {f!r}")
    unknown = sorted(set(obj) - {"layers", "num_experts", "expert_bytes", "moved_bytes", "predicted", "layout"})
    if unknown:
        raise BalanceError(f"placement: unknown field {str(unknown[0])[:40]!r}")
    if not isinstance(obj["layers"], list) or not obj["layers"]:
        raise BalanceError("placement: 'layers' must be a non-empty list")
    num_experts, moved = obj["num_experts"], obj.get("moved_bytes", 0)
    if not isinstance(num_experts, int) or isinstance(num_experts, bool) or not 0 < num_experts <= MAX_EXPERTS:
        raise BalanceError(f"placement: 'num_experts' must be an integer from 1 to {MAX_EXPERTS}, "
                           f"got {str(num_experts)[:40]}")
    if not isinstance(moved, int) or isinstance(moved, bool) or moved < 0:
        raise BalanceError(f"placement: 'moved_bytes' must be a non-negative integer, got {str(moved)[:40]}")
    layout = obj.get("layout", "pooled")
    if layout not in LAYOUTS:
        raise BalanceError(f"placement: 'layout' must be one of {', '.join(LAYOUTS)}, got {str(layout)[:40]}")
    layers = [_layer_from_json(i, x, cluster.num_nodes) for i, x in enumerate(obj["layers"])]
    pl = Placement(layers, num_experts, check_expert_bytes(obj["expert_bytes"]), moved, layout=layout)
    validate_placement(pl, cluster)
    return pl


def validate_placement(pl: Placement, cluster: Cluster) -> None:
    """Devices/experts in range, shares of each expert sum to 1, every expert hosted, each device's replicas of
    all layers within its memory (uniform layout: the same slots in every layer)."""
    budget, frac = cluster.budget(pl.expert_bytes), cluster.node_fraction()
    per_layer = np.minimum(budget // pl.num_layers, pl.num_experts)
    D, E = cluster.num_devices, pl.num_experts
    for i, lp in enumerate(pl.layers):
        where = f"placement layer {i}"
        if lp.device.min() < 0 or lp.device.max() >= D:
            raise BalanceError(
                f"{where}: device index {lp.device.max()} out of range (cluster has {D} devices)"
            )
        if lp.expert.min() < 0 or lp.expert.max() >= E:
            raise BalanceError(f"{where}: expert index out of range (num_experts is {E})")
        hosted = np.bincount(lp.expert, minlength=E)
        if (hosted == 0).any():
            raise BalanceError(f"{where}: expert {int(np.argmin(hosted))} is not hosted on any device")
        sums = np.bincount(lp.expert, weights=lp.share, minlength=E)
        bad = np.abs(sums - 1) > SHARE_TOL
        if bad.any():
            e = int(np.argmax(bad))
            raise BalanceError(f"{where}: shares of expert {e} sum to {sums[e]:.6g}, not 1")
        used = np.bincount(lp.device, minlength=D)
        over = used > per_layer
        if pl.layout == "uniform" and over.any():
            d = int(np.argmax(over))
            raise BalanceError(f"{where}: device {d} hosts {used[d]} replicas but uniform slots give it "
                               f"{per_layer[d]} per layer (memory_bytes // expert_bytes // {pl.num_layers} layers)")
        if lp.by_node is not None:
            _validate_by_node(where, lp, frac, E)
    used = np.array(pl.memory(cluster)["used_bytes"]) if D else np.zeros(0)
    over = used > np.array([d.memory_bytes for d in cluster.devices])
    if over.any():
        d = int(np.argmax(over))
        raise BalanceError(f"placement: device {d} ({cluster.devices[d].name}) hosts {used[d]} bytes of experts over "
                           f"all layers but its memory_bytes is {cluster.devices[d].memory_bytes}")


def _validate_by_node(where: str, lp: LayerPlacement, frac: np.ndarray, E: int) -> None:
    per_node = np.zeros((E, lp.by_node.shape[1]))
    np.add.at(per_node, lp.expert, lp.by_node)
    if (np.abs(per_node - 1) > SHARE_TOL).any():
        e, n = np.argwhere(np.abs(per_node - 1) > SHARE_TOL)[0]
        raise BalanceError(
            f"{where}: by_node fractions of expert {e} from node {n} sum to {per_node[e, n]:.6g}"
        )
    mean = lp.by_node @ frac
    if (np.abs(mean - lp.share) > SHARE_TOL).any():
        r = int(np.argmax(np.abs(mean - lp.share)))
        raise BalanceError(
            f"{where} replica {r}: share {lp.share[r]:.6g} is not the token-weighted mean of by_node"
        )


def load_placement(path, cluster: Cluster) -> Placement:
    return placement_from_json(read_json(path, "placement"), cluster)


def save_placement(pl: Placement, path) -> None:
    Path(path).write_text(json.dumps(pl.to_json()))


# ------------------------------------------------------------------------------------------ cost model


def predict(pl: Placement, loads: np.ndarray, cluster: Cluster, *, token_bytes: int = DEFAULT_TOKEN_BYTES,
            tokens_per_step: int | None = None) -> dict:
    """Per layer and device: compute seconds (token copies per step / throughput), communication seconds and
    bytes per link class (comm.py; placements without by_node are routed node-first), memory used of each
    device's budget, the bounds, and a summary. Compute-only: ratio = max / fluid bound (sum of tokens / sum of
    throughputs). With communication: layer time without / with overlap, and the fluid flow bound (an LP)."""
    from .comm import comm_predict, fluid_bound, route, step_loads

    loads = step_loads(validate_loads(loads), tokens_per_step)
    if loads.shape != (pl.num_layers, pl.num_experts):
        raise BalanceError(
            f"load shape {loads.shape} does not match placement "
            f"({pl.num_layers} layers x {pl.num_experts} experts)"
        )
    _, share = pl.dense(cluster.num_devices)
    by_node = pl.dense_by_node(cluster) if all(lp.by_node is not None for lp in pl.layers) else route(share, cluster)
    thr = cluster.throughput
    t = device_time(share, loads, thr)
    mx, mean = t.max(1), t.mean(1)
    fluid = loads.sum(1) / thr.sum()
    ratio = np.where(fluid > 0, mx / np.where(fluid > 0, fluid, 1), 1.0)
    imbalance = np.where(mean > 0, mx / np.where(mean > 0, mean, 1), 1.0)
    comm = comm_predict(loads, share, by_node, cluster, token_bytes)
    per_copy = (fluid_bound(cluster, token_bytes, overlap=False), fluid_bound(cluster, token_bytes, overlap=True))
    copies = loads.sum(1)
    summary = {
        "mean_ratio": float(ratio.mean()),
        "max_ratio": float(ratio.max()),
        "step_time": float(mx.sum()),
        "fluid_step_time": float(fluid.sum()),
        "mean_imbalance": float(imbalance.mean()),
        "step_s": float(comm["layer_s"].sum()),
        "step_overlap_s": float(comm["layer_overlap_s"].sum()),
        "bound_step_s": float(copies.sum() * per_copy[0]),
        "bound_step_overlap_s": float(copies.sum() * per_copy[1]),
        "bytes_per_class": {c: float(comm["bytes"][:, k].sum()) for k, c in enumerate(LINK_CLASSES)},
        "local_token_fraction": local_fraction(by_node, loads, cluster),
    }
    return {
        "device_time": t.tolist(),
        "max_time": mx.tolist(),
        "fluid_bound": fluid.tolist(),
        "ratio": ratio.tolist(),
        "imbalance": imbalance.tolist(),
        "comm_s": comm["comm_s"].tolist(),
        "layer_s": comm["layer_s"].tolist(),
        "layer_overlap_s": comm["layer_overlap_s"].tolist(),
        "bound_layer_s": (copies * per_copy[0]).tolist(),
        "bound_layer_overlap_s": (copies * per_copy[1]).tolist(),
        "bytes_per_class": {c: comm["bytes"][:, k].tolist() for k, c in enumerate(LINK_CLASSES)},
        "memory": pl.memory(cluster),
        "token_bytes": int(token_bytes),
        "summary": summary,
    }


def local_fraction(by_node: np.ndarray, loads: np.ndarray, cluster: Cluster) -> float:
    """Fraction of all token copies served on the node they come from."""
    node, frac = cluster.node, cluster.node_fraction()
    local = np.einsum("le,led,d->", loads, by_node[:, :, np.arange(len(node)), node], frac[node])
    total = float(loads.sum())
    return float(local / total) if total > 0 else 1.0


def moved_bytes(prev: Placement, new: Placement, num_devices: int) -> int:
    """Bytes to go from `prev` to `new`: every (expert, device) copy in new beyond those in prev costs one
    expert; dropping copies is free."""
    a, _ = prev.dense(num_devices)
    b, _ = new.dense(num_devices)
    return int(np.maximum(b - a, 0).sum()) * new.expert_bytes
