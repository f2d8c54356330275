"""Process groups for a mixed-vendor job: a world group on the bridge backend (gloo by default:
tensors staged through host memory) plus one native subgroup per vendor (NCCL/RCCL) when present;
uneven all-to-all with autograd; hierarchical all-reduce (within vendor, then across vendors)."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from .config import TrainError


def vendor_of(device: str) -> str:
    kind = device.split(":")[0]
    if kind == "cuda" and getattr(torch.version, "hip", None):
        return "rocm"
    return kind


class Comm:
    """One rank's view of the job. `devices[r]` is rank r's device string; groups are built
    collectively (every rank calls new_group in the same order; non-members get no communicator)."""

    def __init__(self, rank: int, devices: list[str], bridge: str, native: dict[str, str], timeout_s: float):
        self.rank, self.world, self.devices, self.bridge = rank, len(devices), list(devices), bridge
        self.timeout = timedelta(seconds=timeout_s)
        self.vendors = [vendor_of(d) for d in devices]
        self.members: dict[str, list[int]] = {}
        for r, v in enumerate(self.vendors):
            self.members.setdefault(v, []).append(r)
        self.leaders = [ranks[0] for ranks in self.members.values()]
        self.island_group, self.island_backend = None, None
        for vendor, ranks in self.members.items():
            if len(ranks) > 1:
                backend = native.get(vendor, bridge)
                group = dist.new_group(ranks, backend=backend, timeout=self.timeout)
                if rank in ranks:
                    self.island_group, self.island_backend = group, backend
        multi = len(self.leaders) > 1
        self.leader_group = dist.new_group(self.leaders, backend=bridge, timeout=self.timeout) if multi else None

    @property
    def vendor(self) -> str:
        return self.vendors[self.rank]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Hierarchical when a native subgroup exists: reduce inside the vendor island, reduce the
        island sums across the bridge among leaders, broadcast back inside the island."""
        if self.world == 1:
            return t
        if self.leader_group is None:
            return self._bridge(dist.all_reduce, t) if self.island_backend == self.bridge else \
                dist.all_reduce(t, group=self.island_group) or t
        mine = self.members[self.vendor]
        if self.island_group is not None:
            dist.all_reduce(t, group=self.island_group)
        if self.rank == mine[0]:
            self._bridge(dist.all_reduce, t, group=self.leader_group)
        if self.island_group is not None:
            dist.broadcast(t, src=mine[0], group=self.island_group)
        return t

    def _bridge(self, op, t: torch.Tensor, group=None) -> torch.Tensor:
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
        dist.all_to_all_single(recv_W, send_W.cpu())
        return recv_W

    def all_to_all(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        """Uneven all-to-all of rows; differentiable (backward is the reverse all-to-all)."""
        return AllToAll.apply(x, send, recv, self)

    def raw_all_to_all(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        out = x.new_empty((sum(recv), *x.shape[1:]))
        if self.world == 1:
            return out.copy_(x)
        host = x.detach().cpu().contiguous()
        got = out.cpu() if out.device.type != "cpu" else out
        dist.all_to_all_single(got, host, output_split_sizes=recv, input_split_sizes=send)
        return got.to(x.device)


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
