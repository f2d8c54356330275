"""Process groups for a mixed-vendor job: a world group on the bridge backend (gloo by default:
tensors staged through host memory) plus one subgroup per vendor island (native NCCL/RCCL for GPU
islands); uneven all-to-all with autograd; hierarchical all-reduce (inside each island, then across
the bridge between island leaders, then a broadcast inside each island). Every collective is counted
(bytes over the bridge and inside islands, seconds) in `traffic`, and bridge transfers can be slowed
to a stated bandwidth."""

from __future__ import annotations

import math
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import TrainError
from .islands import Bridge, Traffic, island_names, ring_bytes, vendor_of

__all__ = ["AllToAll", "Comm", "init_world", "vendor_of"]


class Comm:
    """One rank's view of the job. `devices[r]` is rank r's device string (`cpu@amd` names an island);
    groups are built collectively (every rank calls new_group in the same order; non-members get no
    communicator)."""

    def __init__(self, rank: int, devices: list[str], bridge: str, native: dict[str, str], timeout_s: float,
                 bridge_gbps: float = 0.0):
        self.rank, self.world, self.devices, self.bridge = rank, len(devices), list(devices), bridge
        self.timeout = timedelta(seconds=timeout_s)
        self.islands = island_names(devices)
        self.throttle, self.traffic = Bridge(bridge_gbps), Traffic()
        self.members: dict[str, list[int]] = {}
        for r, name in enumerate(self.islands):
            self.members.setdefault(name, []).append(r)
        self.leaders = [ranks[0] for ranks in self.members.values()]
        self.island_group, self.island_backend = None, None
        for ranks in self.members.values():
            if len(ranks) > 1:
                backend = native.get(vendor_of(devices[ranks[0]]), bridge)
                group = dist.new_group(ranks, backend=backend, timeout=self.timeout)
                if rank in ranks:
                    self.island_group, self.island_backend = group, backend
        multi = len(self.leaders) > 1
        self.leader_group = dist.new_group(self.leaders, backend=bridge, timeout=self.timeout) if multi else None

    @property
    def island(self) -> str:
        return self.islands[self.rank]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        self._all_reduce(t)
        self.traffic.all_reduce_s += time.perf_counter() - start
        return t

    def _all_reduce(self, t: torch.Tensor):
        """Hierarchical when there are several islands: reduce inside the island, reduce the island sums
        across the bridge among leaders, broadcast back inside the island."""
        if self.world == 1:
            return
        nbytes = t.numel() * t.element_size()
        mine = self.members[self.island]
        if self.leader_group is None:
            self.traffic.island_bytes += ring_bytes(nbytes, self.world)
            if self.island_backend == self.bridge:
                self._host(dist.all_reduce, t)
            else:
                dist.all_reduce(t, group=self.island_group)
            return
        self.traffic.hierarchical_all_reduces += 1
        if self.island_group is not None:
            self.traffic.island_bytes += ring_bytes(nbytes, len(mine))
            dist.all_reduce(t, group=self.island_group)
        if self.rank == mine[0]:
            sent = ring_bytes(nbytes, len(self.leaders))
            self.traffic.bridge_bytes += sent
            self._host(dist.all_reduce, t, group=self.leader_group)
            self.throttle.delay(sent)
        if self.island_group is not None:
            self.traffic.island_bytes += nbytes * (len(mine) - 1) / len(mine)
            dist.broadcast(t, src=mine[0], group=self.island_group)

    def _host(self, op, t: torch.Tensor, group=None) -> torch.Tensor:
        host = t if t.device.type == "cpu" or self.bridge != "gloo" else t.cpu()
        op(host, group=group)
        if host is not t:
            t.copy_(host)
        return t

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def exchange_counts(self, send_W: torch.Tensor) -> torch.Tensor:
        """send_W[d] = how many rows this rank sends to rank d -> recv_W[s] = rows it gets from s."""
        recv_W = torch.empty_like(send_W, device="cpu")  # gloo: host tensors
        if self.world == 1:
            return send_W.clone()
        start = time.perf_counter()
        dist.all_to_all_single(recv_W, send_W.cpu())
        self.traffic.all_to_all_s += time.perf_counter() - start
        return recv_W

    def all_to_all(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        """Uneven all-to-all of rows; differentiable (backward is the reverse all-to-all)."""
        return AllToAll.apply(x, send, recv, self)

    def raw_all_to_all(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        out = x.new_empty((sum(recv), *x.shape[1:]))
        if self.world == 1:
            return out.copy_(x)
        start = time.perf_counter()
        host = x.detach().cpu().contiguous()
        got = out.cpu() if out.device.type != "cpu" else out
        dist.all_to_all_single(got, host, output_split_sizes=recv, input_split_sizes=send)
        self.throttle.delay(self.count_rows(send, recv, math.prod(x.shape[1:]) * x.element_size()))
        self.traffic.all_to_all_s += time.perf_counter() - start
        return got.to(x.device)

    def count_rows(self, send: list[int], recv: list[int], row_bytes: int) -> int:
        """Adds this rank's sent bytes to the bridge / island counters; -> the larger of the bytes it sent
        and received over the bridge (a full-duplex link is busy for that long)."""
        home = self.island
        out_bridge = in_bridge = 0
        for d, (s, r) in enumerate(zip(send, recv)):
            if d == self.rank:
                continue
            if self.islands[d] == home:
                self.traffic.island_bytes += s * row_bytes
            else:
                out_bridge, in_bridge = out_bridge + s * row_bytes, in_bridge + r * row_bytes
        self.traffic.bridge_bytes += out_bridge
        self.traffic.token_bridge_bytes += out_bridge
        return max(out_bridge, in_bridge)


class AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, send, recv, comm):
        ctx.send, ctx.recv, ctx.comm = send, recv, comm
        return comm.raw_all_to_all(x, send, recv)

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm.raw_all_to_all(grad.contiguous(), ctx.recv, ctx.send), None, None, None


def init_world(rank: int, world: int, bridge: str, timeout_s: float):
    """Joins the job (env:// rendezvous from torchrun or the test harness) with a timeout so a dead
    or hung peer fails the job instead of hanging it."""
    if world == 1:
        return
    if not dist.is_initialized():
        dist.init_process_group(bridge, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    if dist.get_world_size() != world:
        raise TrainError(f"the job has {dist.get_world_size()} processes but the config names {world} devices")
