"""The run report: report.json (config, per-step loss / tokens/s / imbalance, per-rank backend, experts
hosted and rows computed, bytes moved by re-planning) and loss.png (the loss curve). Steps are counted
from 1, as on the console and in checkpoint names; a resumed run's report holds the earlier steps too."""

from __future__ import annotations

import json
from pathlib import Path

from .config import TrainConfig


def summarize(steps: list[dict], ranks: list[dict], resumed_at: int = 0) -> list[str]:
    """A few human lines: loss first -> last, throughput, imbalance, bytes moved, backend per rank."""
    if not steps:
        return ["no steps ran"]
    ran = [s for s in steps if s["step"] > resumed_at] or steps  # this run's steps (not the resumed run's)
    tps = [s["tokens_per_s"] for s in ran[1:]] or [ran[0]["tokens_per_s"]]
    resumed = f" (resumed after step {resumed_at})" if resumed_at else ""
    lines = [f"loss {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f} over steps {steps[0]['step']}-"
             f"{steps[-1]['step']}{resumed}",
             f"throughput {sorted(tps)[len(tps) // 2]:.0f} tokens/s (median, first step of this run excluded)",
             f"rank load imbalance (max/mean of rows/speed) last step {steps[-1]['imbalance']:.2f}",
             f"re-plan moved {sum(s.get('moved_bytes', 0) for s in steps) / 1e6:.3f} MB of expert weights"]
    last = steps[-1]
    if last.get("hierarchical_all_reduces"):          # several islands: what crossed the bridge
        lines.append(f"{last['routing']} routing: {last['bridge_bytes'] / 1e6:.3f} MB over the bridge, "
                     f"{last['island_bytes'] / 1e6:.3f} MB inside islands per step; "
                     f"{last['hierarchical_all_reduces']} hierarchical all-reduces")
    elif "island_bytes" in last:                       # one island: no bridge to speak of
        lines.append(f"one island: {last['island_bytes'] / 1e6:.3f} MB between ranks per step")
    for r in sorted(ranks, key=lambda r: r["rank"]):
        why = f" (fell back: {r['fallback_reason']})" if r.get("fallback_reason") else ""
        lines.append(f"rank {r['rank']}: experts on {r['backend']}{why}, {r['experts_hosted']} experts hosted")
    return lines


def write_report(where: Path, cfg: TrainConfig, steps: list[dict], ranks: list[dict], resumed_at: int = 0,
                 notes: list[str] = ()) -> dict:
    """steps: every step of the run (a resumed run's earlier ones first); resumed_at: the checkpoint's step."""
    where.mkdir(parents=True, exist_ok=True)
    rows = steps[-1]["rank_rows"] if steps else []
    report = {"config": json.loads(cfg.to_json()), "steps": steps, "ranks": ranks, "resumed_at": resumed_at,
              "notes": list(notes), "per_rank_rows_last_step": rows,
              "summary": summarize(steps, ranks, resumed_at)}
    (where / "report.json").write_text(json.dumps(report, indent=1))
    plot_loss(where / "loss.png", steps, resumed_at)
    return report


def plot_loss(path: Path, steps: list[dict], resumed_at: int = 0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], marker=".")
    if resumed_at:
        ax.axvline(resumed_at, color="gray", linestyle=":", label=f"resumed after step {resumed_at}")
        ax.legend(loc="upper right", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
