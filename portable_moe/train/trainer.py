"""One rank's training loop: data shard -> forward (dense data-parallel, MoE expert-parallel) -> backward
-> gradient sync (dense: hierarchical all-reduce; experts: sum over replicas) -> AdamW -> load statistics,
DeepSeek bias update, re-plan and migration, checkpoints.

Legend: L layers, E experts, W ranks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import balance
from ..models import PRESETS, load_config, preset
from ..runtime import resolve_device
from . import checkpoint as ckpt
from . import placement as pl
from .balance_loop import migrate
from .comm import Comm
from .config import TrainConfig, TrainError
from .data import shard
from .expert_parallel import ExpertParallel
from .islands import Traffic, device_of, island_index, route_tables
from .model import EXPERT_KINDS, TrainModel, expert_name, local_compute, reference_params, split_name
from .optim import NamedAdamW


def rank_device(device: str) -> torch.device:
    """The torch device that holds a rank's tensors (an OpenCL rank's live in host memory)."""
    return torch.device(resolve_device(device_of(device)).torch_device)


@dataclass
class StepRecord:
    step: int                           # counted from 1: the number of steps done when it ended
    loss: float
    ce: float
    tokens_per_s: float
    imbalance: float
    seconds: float
    rank_rows: list[float] = field(default_factory=list)
    routing: str = ""
    bridge_bytes: float = 0.0           # summed over ranks: bytes each sent over the bridge / inside its island
    island_bytes: float = 0.0
    token_bridge_bytes: float = 0.0     # the all-to-all's part of bridge_bytes (tokens out and back)
    hierarchical_all_reduces: int = 0   # on rank 0
    rank_compute_s: list[float] = field(default_factory=list)     # step time outside collectives
    rank_all_to_all_s: list[float] = field(default_factory=list)
    rank_all_reduce_s: list[float] = field(default_factory=list)


class Trainer:
    def __init__(self, cfg: TrainConfig, comm: Comm):
        self.cfg, self.comm = cfg, comm
        self.device = rank_device(cfg.devices[comm.rank])
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.mcfg = preset(cfg.model) if cfg.model in PRESETS else load_config(cfg.model)
        m = self.mcfg
        self.expert_bytes = 3 * m.hidden * m.expert_ffn * torch.finfo(torch.float32).bits // 8
        self.stats = balance.LoadStats(m.layers, m.experts)
        self.opt = NamedAdamW(cfg.lr, weight_decay=cfg.weight_decay)
        self.start_step, self.moved_bytes, self.history = 0, 0, []
        self.compute = local_compute(m, cfg.backends[comm.rank], device_of(cfg.devices[comm.rank]))
        self.placement = pl.initial(cfg, m.layers, m.experts, self.expert_bytes)
        self.notes: list[str] = []      # what the run should tell the user (damaged checkpoints skipped)
        self.damaged: list[Path] = []
        if cfg.checkpoint and cfg.resume:
            path, index, damaged = ckpt.newest_intact(Path(cfg.checkpoint))
            self.damaged = list(damaged)
            self.notes = [f"checkpoint {p.name} is damaged ({why}); resuming from {path.name} (the next save "
                          f"keeps it as damaged-{p.name})" for p, why in damaged.items()]
            self.restore(path, index)
        else:
            self.set_model(reference_params(m, cfg.seed))

    # -- placement ---------------------------------------------------------------------------------
    def set_model(self, full_params):
        _, hosts = pl.tables(self.placement, self.comm.world)
        self.hosts = hosts
        self.model = TrainModel(self.mcfg, full_params, hosts, self.comm.rank, self.device)
        self.build_layers(self.routes(), hosts)

    def routes(self):
        """This rank's routing table share_LEW: by_node for its island (island routing) or share (global)."""
        island = island_index(self.cfg.devices)[self.comm.rank]
        return route_tables(self.placement, self.comm.world, island, self.cfg.routing)

    def build_layers(self, share_LEW, hosts_LEW):
        r = self.comm.rank
        self.eps = [ExpertParallel(self.comm, share_LEW[i], hosts_LEW[i], self.compute, self.cfg.speed(r),
                                   self.cfg.slowdown, self.cfg.capacity_factor) for i in range(self.mcfg.layers)]

    def replan(self) -> int:
        new = pl.replan(self.stats.loads(), self.cfg, self.expert_bytes, self.placement)
        _, hosts = pl.tables(new, self.comm.world)
        copies = migrate(self.model, self.opt, self.comm, self.hosts, hosts)
        self.placement, self.hosts = new, hosts
        share = self.routes()
        for i, ep in enumerate(self.eps):
            ep.set_placement(share[i], hosts[i])
        self.moved_bytes += copies * self.expert_bytes
        return copies * self.expert_bytes

    # -- one step ----------------------------------------------------------------------------------
    def step(self, step: int) -> StepRecord:
        """Runs step index `step` (0-based: it picks the batch); the record counts from 1."""
        cfg, comm, m = self.cfg, self.comm, self.mcfg
        start = time.perf_counter()
        comm.traffic.reset()
        for ep in self.eps:
            ep.rows_done = 0
        ids, targets = (t.to(self.device) for t in shard(cfg.seed, step, cfg.batch, cfg.seq, m.vocab_size,
                                                         comm.rank, comm.world))
        ce, aux, z, counts_LE = self.model.forward(ids, targets, self.eps, comm, cfg.aux_free_rate > 0)
        loss = ce + cfg.aux_loss * aux + cfg.z_loss * z
        (loss / comm.world).backward()
        self.sync_grads()
        if cfg.dump and step == 0:
            self.dump_grads(Path(cfg.dump))
        self.opt.step(self.model.params())
        for p in self.model.params().values():
            p.grad = None
        W, C = comm.world, len(Traffic.FIELDS) + 1
        packed = torch.zeros(2 + W + counts_LE.numel() + W * C, dtype=torch.float64, device=self.device)
        packed[0], packed[1] = ce.detach() / W, loss.detach() / W
        packed[2 + comm.rank] = sum(ep.rows_done for ep in self.eps)
        packed[2 + W:2 + W + counts_LE.numel()] = counts_LE.reshape(-1)
        at = 2 + W + counts_LE.numel() + comm.rank * C
        packed[at:at + C] = torch.tensor(comm.traffic.as_list() + [time.perf_counter() - start], dtype=torch.float64,
                                          device=self.device)
        packed = comm.all_reduce_sum(packed).cpu()
        global_LE = packed[2 + W:2 + W + counts_LE.numel()].reshape(m.layers, m.experts)
        per_rank = packed[2 + W + counts_LE.numel():].reshape(W, C)
        self.stats.update_all(global_LE)
        self.update_bias(global_LE)
        seconds = time.perf_counter() - start
        rows = packed[2:2 + W].tolist()
        work = np.array(rows) / np.array([cfg.speed(r) for r in range(W)])
        rec = StepRecord(step + 1, float(packed[1]), float(packed[0]), cfg.batch * cfg.seq / seconds,
                         float(work.max() / max(work.mean(), 1e-12)), seconds, rows, **self.traffic_fields(per_rank))
        self.history.append(rec)
        return rec

    def traffic_fields(self, per_rank: torch.Tensor) -> dict:
        """per_rank [W, Traffic.FIELDS + busy seconds] -> the step record's communication fields."""
        cols = {f: per_rank[:, i] for i, f in enumerate(Traffic.FIELDS)}
        a2a, ar = cols["all_to_all_s"], cols["all_reduce_s"]
        return {"routing": self.cfg.routing, "bridge_bytes": float(cols["bridge_bytes"].sum()),
                "island_bytes": float(cols["island_bytes"].sum()),
                "token_bridge_bytes": float(cols["token_bridge_bytes"].sum()),
                "hierarchical_all_reduces": int(cols["hierarchical_all_reduces"][0]),
                "rank_compute_s": (per_rank[:, -1] - a2a - ar).tolist(), "rank_all_to_all_s": a2a.tolist(),
                "rank_all_reduce_s": ar.tolist()}

    def update_bias(self, global_LE: torch.Tensor):
        """DeepSeek-V3 auxiliary-loss-free balancing: b_e += rate * sign(mean load - load_e); the bias
        changes which experts are selected, never the combine weights."""
        if self.cfg.aux_free_rate > 0:
            err = global_LE.mean(-1, keepdim=True) - global_LE
            self.model.score_bias += (self.cfg.aux_free_rate * torch.sign(err).float()).to(self.device)

    def sync_grads(self):
        comm, dense = self.comm, list(self.model.dense.values())
        flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=self.device)
                          for p in dense])
        comm.all_reduce_sum(flat)
        at = 0
        for p in dense:
            p.grad = flat[at:at + p.numel()].view_as(p).clone()
            at += p.numel()
        self.sync_replicas()

    def sync_replicas(self):
        """Experts held by several ranks: sum their gradients over the holders (zeros elsewhere)."""
        replicated = torch.nonzero(self.hosts.sum(-1) > 1).tolist()
        if not replicated or self.comm.world == 1:
            return
        names = [expert_name(layer, k, e) for layer, e in replicated for k in EXPERT_KINDS]
        shapes = self.shapes()
        sizes = [shapes[split_name(n)[0].rpartition(".")[2]].numel() for n in names]
        flat = torch.zeros(sum(sizes), device=self.device)
        at = 0
        for n, size in zip(names, sizes):
            p = self.model.experts.get(n)
            if p is not None and p.grad is not None:
                flat[at:at + size] = p.grad.reshape(-1)
            at += size
        self.comm.all_reduce_sum(flat)
        at = 0
        for n, size in zip(names, sizes):
            if n in self.model.experts:
                self.model.experts[n].grad = flat[at:at + size].view_as(self.model.experts[n]).clone()
            at += size

    def dump_grads(self, where):
        where.mkdir(parents=True, exist_ok=True)
        grads = {n: p.grad for n, p in self.model.params().items() if p.grad is not None}
        ckpt.write_shard(where, self.comm.rank, grads)

    def shapes(self) -> dict[str, torch.Size]:
        m = self.mcfg
        return {"gate_up": torch.Size((2 * m.expert_ffn, m.hidden)), "down": torch.Size((m.hidden, m.expert_ffn))}

    # -- checkpoints -------------------------------------------------------------------------------
    def owned(self) -> dict[str, torch.Tensor]:
        """What this rank writes: dense state on rank 0; each expert (weights + moments) by its lowest holder."""
        out = {}
        if self.comm.rank == 0:
            for n, p in self.model.dense.items():
                m, v = self.opt.state(n, p)
                out |= {f"param/{n}": p, f"m/{n}": m, f"v/{n}": v}
            out["bias/score_bias"] = self.model.score_bias
            out["stats/loads"] = torch.from_numpy(self.stats.loads())
        for n, p in self.model.experts.items():
            base, e = split_name(n)
            layer = int(base.split(".")[1])
            if int(torch.nonzero(self.hosts[layer, e]).flatten()[0]) == self.comm.rank:
                m, v = self.opt.state(n, p)
                out |= {f"param/{n}": p, f"m/{n}": m, f"v/{n}": v}
        return out

    def save(self, step: int):
        root = Path(self.cfg.checkpoint)
        if self.comm.rank == 0:
            ckpt.prepare(root, step)
        self.comm.barrier()
        ckpt.write_shard(ckpt.step_dir(root, step).with_suffix(".tmp"), self.comm.rank, self.owned())
        self.comm.barrier()
        if self.comm.rank == 0:
            ckpt.set_aside(self.damaged)
            meta = {"step": step, "opt_step": self.opt.step_count, "devices": list(self.cfg.devices),
                    "speeds": [self.cfg.speed(r) for r in range(self.comm.world)],
                    "placement": self.placement.to_json(), "moved_bytes": self.moved_bytes,
                    "history": [vars(h) for h in self.history]}
            ckpt.commit(root, step, meta)
        self.damaged = []
        self.comm.barrier()

    def restore(self, path: Path, index: dict):
        try:
            self.load(path, index)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise TrainError(f"checkpoint {path} has malformed metadata ({type(e).__name__}: {str(e)[:200]})") \
                from None

    def load(self, path: Path, index: dict):
        """This rank's share of a checkpoint onto its device; the placement is re-planned when the ranks differ."""
        meta = index["meta"]
        same = meta["devices"] == list(self.cfg.devices) and meta["speeds"] == [
            self.cfg.speed(r) for r in range(self.comm.world)]
        base = ckpt.load_tensors(path, index, ["stats/loads", "bias/score_bias"])
        loads = base["stats/loads"].numpy()
        self.stats.update_all(loads)
        if same:
            self.placement = pl.from_json(meta["placement"], self.cfg)
        elif loads.sum() > 0:
            self.placement = pl.replan(loads, self.cfg, self.expert_bytes)
        _, hosts = pl.tables(self.placement, self.comm.world)
        dense = [n[len("param/"):] for n in index["weight_map"] if n.startswith("param/") and ".moe.experts." not in n]
        experts = [expert_name(layer, k, e) for layer, e in torch.nonzero(hosts[:, :, self.comm.rank]).tolist()
                   for k in EXPERT_KINDS]
        names = dense + experts
        got = ckpt.load_tensors(path, index, [f"{p}/{n}" for n in names for p in ("param", "m", "v")])
        self.hosts = hosts
        self.model = TrainModel.from_tensors(self.mcfg, self.comm.rank, self.device,
                                             {n: got[f"param/{n}"] for n in dense},
                                             {n: got[f"param/{n}"] for n in experts}, base["bias/score_bias"])
        for n in names:
            self.opt.m[n], self.opt.v[n] = (got[f"{k}/{n}"].to(self.device, copy=True) for k in ("m", "v"))
        self.opt.step_count = int(meta["opt_step"])
        self.start_step, self.moved_bytes = int(meta["step"]), int(meta["moved_bytes"])
        self.history = [StepRecord(**h) for h in meta["history"]]
        self.build_layers(self.routes(), hosts)
