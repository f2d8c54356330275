"""The balancer in the loop: every N steps re-plan from the job's load statistics (incrementally, with a
bounded number of bytes moved) and migrate expert weights *and their AdamW moments* to their new ranks
by one uneven all-to-all. Placement changes only who computes what, never the maths.

Legend: L layers, E experts, W ranks."""

from __future__ import annotations

import torch

from .comm import Comm
from .model import EXPERT_KINDS, TrainModel, expert_name
from .optim import NamedAdamW


def transfers(old_LEW: torch.Tensor, new_LEW: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(layer, expert, source rank, destination rank) for every new copy, in one global order; the source
    is the lowest rank that held the expert before."""
    out = []
    for layer, e, dst in torch.nonzero(new_LEW & ~old_LEW).tolist():
        src = int(torch.nonzero(old_LEW[layer, e]).flatten()[0])
        out.append((layer, e, src, dst))
    return out


def pack(model: TrainModel, opt: NamedAdamW, layer: int, e: int) -> torch.Tensor:
    parts = []
    for kind in EXPERT_KINDS:
        name = expert_name(layer, kind, e)
        w = model.experts[name].detach()
        m, v = opt.state(name, w)
        parts += [w.reshape(-1), m.reshape(-1), v.reshape(-1)]
    return torch.cat(parts)


def unpack(model: TrainModel, opt: NamedAdamW, layer: int, e: int, row: torch.Tensor, shapes: dict):
    at = 0
    for kind in EXPERT_KINDS:
        name, shape = expert_name(layer, kind, e), shapes[kind]
        n = shape.numel()
        w, m, v = (row[at + i * n:at + (i + 1) * n].reshape(shape).clone() for i in range(3))
        at += 3 * n
        model.experts[name] = w.requires_grad_(True)
        opt.m[name], opt.v[name] = m, v


def migrate(model: TrainModel, opt: NamedAdamW, comm: Comm, old_LEW: torch.Tensor, new_LEW: torch.Tensor) -> int:
    """Moves experts so that rank r holds exactly new_LEW[:, :, r]; returns the number of copies made."""
    moves = transfers(old_LEW, new_LEW)
    c = model.cfg
    shapes = {"gate_up": torch.Size((2 * c.expert_ffn, c.hidden)), "down": torch.Size((c.hidden, c.expert_ffn))}
    width = 3 * sum(s.numel() for s in shapes.values())
    mine = [mv for mv in moves if mv[2] == comm.rank]
    mine.sort(key=lambda mv: mv[3])  # grouped by destination, global order inside each group
    rows = [pack(model, opt, layer, e) for layer, e, _, _ in mine]
    send_buf = torch.stack(rows) if rows else torch.zeros(0, width, device=model.device)
    send = [sum(1 for mv in mine if mv[3] == d) for d in range(comm.world)]
    incoming = sorted((mv for mv in moves if mv[3] == comm.rank), key=lambda mv: mv[2])
    recv = [sum(1 for mv in incoming if mv[2] == s) for s in range(comm.world)]
    got = comm.raw_all_to_all(send_buf, send, recv) if comm.world > 1 else send_buf
    for (layer, e, _, _), row in zip(incoming, got):
        unpack(model, opt, layer, e, row, shapes)
    for layer, e in torch.nonzero(old_LEW[:, :, comm.rank] & ~new_LEW[:, :, comm.rank]).tolist():
        for kind in EXPERT_KINDS:
            name = expert_name(layer, kind, e)
            model.experts.pop(name)
            opt.drop(name)
    return len(moves)
