"""The expert-parallel MoE layer: route locally, dispatch each token once per destination rank by an
uneven all-to-all, run the rank's hosted experts through its own backend, send partial weighted sums
back, add them up at the source.

Legend: T local tokens, H hidden, F expert FFN width, K top-k, E experts, W ranks, R = T*K routed pairs,
N token rows received, P pairs received, X experts hosted here (slots)."""

from __future__ import annotations

import math
import time

import torch

from .comm import Comm


def replica_destinations(e_R: torch.Tensor, share_EW: torch.Tensor) -> torch.Tensor:
    """Destination rank of each routed pair: each expert's pairs, in token order, are split over its
    replicas' ranks by cumulative share (deterministic; rank order)."""
    E = share_EW.shape[0]
    order = torch.sort(e_R, stable=True).indices
    counts_E = torch.bincount(e_R, minlength=E)
    starts_E = torch.cumsum(counts_E, 0) - counts_E
    pos_R = torch.empty_like(e_R)
    pos_R[order] = torch.arange(e_R.numel()) - starts_E[e_R[order]]
    cum_EW = torch.round(torch.cumsum(share_EW.double(), 1) * counts_E[:, None]).long()
    cum_EW[:, -1] = counts_E
    return (cum_EW[e_R] <= pos_R[:, None]).sum(-1)


class ExpertParallel:
    """One MoE layer's distribution. `share_EW[e, d]` is the fraction of expert e's tokens served on
    rank d; `slots[d]` lists the experts rank d hosts (sorted)."""

    def __init__(self, comm: Comm, share_EW: torch.Tensor, hosts_EW: torch.Tensor, compute, speed: float = 1.0,
                 slowdown: str = "repeat", capacity_factor: float = 0.0):
        self.comm, self.compute, self.speed, self.slowdown = comm, compute, speed, slowdown
        self.capacity_factor = capacity_factor
        self.set_placement(share_EW, hosts_EW)
        self.rows_done = 0

    def set_placement(self, share_EW: torch.Tensor, hosts_EW: torch.Tensor):
        self.share_EW = share_EW.double()
        self.slots = [torch.nonzero(hosts_EW[:, d]).flatten().tolist() for d in range(hosts_EW.shape[1])]
        self.slot_EW = torch.full(hosts_EW.shape, -1, dtype=torch.long)
        for d, experts in enumerate(self.slots):
            self.slot_EW[experts, d] = torch.arange(len(experts))

    def keep_mask(self, e_R: torch.Tensor, T: int, K: int) -> torch.Tensor:
        if not self.capacity_factor:
            return torch.ones_like(e_R, dtype=torch.bool)
        E = self.share_EW.shape[0]
        cap = math.ceil(self.capacity_factor * T * K / E)
        order = torch.sort(e_R, stable=True).indices
        counts_E = torch.bincount(e_R, minlength=E)
        pos = torch.empty_like(e_R)
        pos[order] = torch.arange(e_R.numel()) - (torch.cumsum(counts_E, 0) - counts_E)[e_R[order]]
        return pos < cap

    def __call__(self, x_TH: torch.Tensor, w_TK: torch.Tensor, idx_TK: torch.Tensor, experts) -> torch.Tensor:
        """experts(slot list) -> (gate_up_XFH, down_XHF) stacked from this rank's parameters. Activations
        and weights stay on the rank's device; the routing bookkeeping is made on the host."""
        with torch.device("cpu"):
            return self.route(x_TH, w_TK, idx_TK, experts)

    def route(self, x_TH: torch.Tensor, w_TK: torch.Tensor, idx_TK: torch.Tensor, experts) -> torch.Tensor:
        T, K = idx_TK.shape
        W, H, dev = self.comm.world, x_TH.shape[1], x_TH.device
        e_R, w_R = idx_TK.reshape(-1).cpu(), w_TK.reshape(-1)
        t_R, k_R = torch.arange(T * K) // K, torch.arange(T * K) % K
        keep = self.keep_mask(e_R, T, K)
        e_R, w_R, t_R, k_R = e_R[keep], w_R[keep.to(dev)], t_R[keep], k_R[keep]
        d_R = replica_destinations(e_R, self.share_EW) if e_R.numel() else e_R
        # one row per (destination, token), ordered by destination; it carries the token's K weight slots
        # for that destination, so dispatch and combine are one chain of two all-to-alls (a fixed
        # backward order on every rank)
        uniq, row_R = torch.unique(d_R * T + t_R, return_inverse=True)
        send_tok, send_dest = uniq % T, uniq // T
        tok_counts = torch.bincount(send_dest, minlength=W)
        w_NK = (w_R.new_zeros(uniq.numel(), K)).index_put((row_R.to(dev), k_R.to(dev)), w_R)
        pair_order = torch.sort(d_R * T + t_R, stable=True).indices
        pair_counts = torch.bincount(d_R, minlength=W)
        chunk_start = torch.cumsum(tok_counts, 0) - tok_counts
        d_P = d_R[pair_order]
        meta = torch.stack([row_R[pair_order] - chunk_start[d_P], self.slot_EW[e_R[pair_order], d_P],
                            k_R[pair_order]], 1)
        recv = self.comm.exchange_counts(torch.stack([tok_counts, pair_counts], 1)).reshape(W, 2)
        send_t, recv_t = tok_counts.tolist(), recv[:, 0].tolist()
        send_p, recv_p = pair_counts.tolist(), recv[:, 1].tolist()
        meta_P3 = self.comm.raw_all_to_all(meta, send_p, recv_p)
        got = self.comm.all_to_all(torch.cat([x_TH[send_tok.to(dev)], w_NK.to(x_TH.dtype)], 1), send_t, recv_t)
        rows_NH, w_NK = got[:, :H], got[:, H:]
        src_P = torch.repeat_interleave(torch.arange(W), torch.tensor(recv_p, dtype=torch.long))
        row_P = meta_P3[:, 0] + (torch.cumsum(torch.tensor(recv_t), 0) - torch.tensor(recv_t))[src_P]
        out_NH = self.local(rows_NH, row_P, meta_P3[:, 1], w_NK[row_P.to(dev), meta_P3[:, 2].to(dev)], experts)
        back = self.comm.all_to_all(out_NH, recv_t, send_t)
        return torch.zeros_like(x_TH).index_add(0, send_tok.to(dev), back.to(x_TH.dtype))

    def local(self, rows_NH, row_P, slot_P, w_P, experts) -> torch.Tensor:
        slots = self.slots[self.comm.rank]
        if not slots or row_P.numel() == 0:
            return rows_NH * 0
        order = torch.sort(slot_P, stable=True).indices
        counts = torch.bincount(slot_P, minlength=len(slots))
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        gate_up, down = experts(slots)
        order, row_P = order.to(rows_NH.device), row_P.to(rows_NH.device)
        x_PH = rows_NH[row_P[order]]
        start = time.perf_counter()
        y_PH = self.compute(x_PH, gate_up, down, offsets)
        self.rows_done += x_PH.shape[0]
        self.emulate_slowness(time.perf_counter() - start, x_PH, gate_up, down, offsets)
        y_PH = y_PH * w_P[order, None].to(y_PH.dtype)
        return torch.zeros_like(rows_NH).index_add(0, row_P[order], y_PH)

    def emulate_slowness(self, elapsed: float, x_PH, gate_up, down, offsets):
        """A rank of relative speed s < 1 redoes its expert forward round(1/s - 1) more times (repeat) or
        sleeps (1/s - 1) times the measured compute time (sleep): the documented stand-in for a slower device."""
        if self.speed >= 1.0:
            return
        extra = 1.0 / self.speed - 1.0
        if self.slowdown == "sleep":
            time.sleep(elapsed * extra)
            return
        with torch.no_grad():
            for _ in range(round(extra)):
                self.compute(x_PH.detach(), gate_up.detach(), down.detach(), offsets)
