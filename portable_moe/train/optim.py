"""AdamW over named tensors. State is keyed by parameter name, so an expert's moments travel with its
weights when the balancer moves it, and a checkpoint can be read back on any rank mix."""

from __future__ import annotations

import torch


class NamedAdamW:
    def __init__(self, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.step_count = 0
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def state(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.m:
            self.m[name], self.v[name] = torch.zeros_like(like), torch.zeros_like(like)
        return self.m[name], self.v[name]

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor]):
        self.step_count += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.step_count, 1 - b2 ** self.step_count
        for name, p in params.items():
            if p.grad is None:
                continue
            m, v = self.state(name, p)
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            if self.weight_decay:
                p.mul_(1 - self.lr * self.weight_decay)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)

    def drop(self, name: str):
        self.m.pop(name, None)
        self.v.pop(name, None)
