"""A synthetic next-token task with learnable structure, generated from (seed, step) alone, so every
rank can cut its shard without communication and a resumed run sees exactly the same batches.

Rule, over the first A = min(V, 32) token ids: the first two tokens are random; each next token is
(5 * previous + 7 * the one before + 3) mod A, with 10% of positions replaced by noise (so the loss has
a floor above zero). A model first learns which A ids occur (loss ln V -> ln A), then the rule."""

from __future__ import annotations

import torch

ALPHABET = 32


def global_batch(seed: int, step: int, batch: int, seq: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids[batch, seq], targets[batch, seq] for one step of the whole job."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    vocab = min(vocab, ALPHABET)
    tokens = torch.empty(batch, seq + 1, dtype=torch.long, device="cpu")
    tokens[:, :2] = torch.randint(0, vocab, (batch, 2), generator=g, device="cpu")
    for i in range(2, seq + 1):
        tokens[:, i] = (5 * tokens[:, i - 1] + 7 * tokens[:, i - 2] + 3) % vocab
    noise = torch.rand(batch, seq + 1, generator=g, device="cpu") < 0.1
    tokens = torch.where(noise, torch.randint(0, vocab, (batch, seq + 1), generator=g, device="cpu"), tokens)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def shard(seed: int, step: int, batch: int, seq: int, vocab: int, rank: int, world: int):
    """This rank's rows of the global batch (contiguous block rank*batch/world ...)."""
    ids, targets = global_batch(seed, step, batch, seq, vocab)
    per = batch // world
    return ids[rank * per:(rank + 1) * per], targets[rank * per:(rank + 1) * per]
