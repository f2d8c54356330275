"""PNG of two plans side by side per device: compute and communication seconds per step (matplotlib, Agg)."""

from __future__ import annotations

import numpy as np

from .cluster import Cluster


def step_ratio(predicted: dict) -> float:
    """Compute-only step time / fluid bound (sums over layers): the number `plan` prints as well."""
    s = predicted["summary"]
    return s["step_time"] / s["fluid_step_time"] if s["fluid_step_time"] > 0 else 1.0


def per_device(predicted: dict) -> tuple[np.ndarray, np.ndarray]:
    """-> (compute [D], communication [D]) seconds per step, summed over layers."""
    return np.asarray(predicted["device_time"]).sum(0), np.asarray(predicted["comm_s"]).sum(0)


def plot_device_times(ours: dict, other: dict, cluster: Cluster, path, other_label: str = "EPLB",
                      ours_label: str = "ours") -> None:
    """ours/other: `predicted` dicts. Per device, one stacked bar per plan (compute, then communication);
    the dashed line is the compute-only fluid bound per device (sum of tokens / sum of throughputs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(cluster.num_devices)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(x) + 2), 4))
    for offset, label, pred, color in ((-0.2, other_label, other, "tab:gray"), (0.2, ours_label, ours, "tab:blue")):
        comp, comm = per_device(pred)
        s = pred["summary"]
        ax.bar(x + offset, comp, 0.4, color=color,
               label=f"{label} compute (step / fluid bound {step_ratio(pred):.3f})")
        ax.bar(x + offset, comm, 0.4, bottom=comp, color=color, alpha=0.4, hatch="//",
               label=f"{label} communication (step {s['step_s']:.4g} s with it)")
    ax.axhline(float(np.sum(ours["fluid_bound"])), color="k", ls="--", lw=1, label="fluid bound (compute)")
    ax.set_xticks(x, [f"{d.name}\n{d.model}" for d in cluster.devices], fontsize=6)
    ax.set_ylabel("seconds per step (sum over layers)")
    ax.set_title("predicted time per device: compute + communication")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
