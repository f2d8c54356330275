"""PNG plot of per-device predicted time before and after a re-plan (matplotlib, Agg backend)."""

from __future__ import annotations

import numpy as np

from .cluster import Cluster


def plot_device_times(
    before: dict, after: dict, cluster: Cluster, path, before_label: str = "before"
) -> None:
    """before/after: `predicted` dicts. Bars: mean over layers of each device's time; lines: fluid bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tb, ta = np.asarray(before["device_time"]), np.asarray(after["device_time"])  # [L, D]
    fluid = float(np.mean(after["fluid_bound"]))
    x = np.arange(cluster.num_devices)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(x) + 2), 4))
    ax.bar(
        x - 0.2,
        tb.mean(0),
        0.4,
        label=f"{before_label} (step ratio "
        f"{before['summary']['step_time'] / max(before['summary']['fluid_step_time'], 1e-300):.3f})",
    )
    ax.bar(
        x + 0.2,
        ta.mean(0),
        0.4,
        label=f"after (step ratio "
        f"{after['summary']['step_time'] / max(after['summary']['fluid_step_time'], 1e-300):.3f})",
    )
    ax.axhline(fluid, color="k", ls="--", lw=1, label="fluid bound")
    ax.set_xticks(x, [f"{d.name}\n{d.model}" for d in cluster.devices], fontsize=6)
    ax.set_ylabel("mean predicted time per layer")
    ax.set_title("per-device predicted time (tokens / throughput)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
