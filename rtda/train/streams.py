"""A training data stream: endless batches, in an order that is a function of the seed and of
how many samples were consumed, so that a resumed run reads what an uninterrupted one would."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from rtda.data import collate
from rtda.train.distributed import World
from rtda.train.sampler import ResumableSampler


class DataStream:
    """An endless iterator of batches whose position (samples consumed) is checkpointed."""

    def __init__(self, dataset, batch_size: int, world: World, seed: int, workers: int,
                 consumed: int = 0, on_skip=None, weights=None) -> None:
        self.dataset, self.consumed, self.global_batch = dataset, consumed, batch_size
        self.on_skip = on_skip
        local = batch_size // world.size
        sampler = ResumableSampler(len(dataset), seed=seed, start=consumed,
                                   num_replicas=world.size, rank=world.rank, weights=weights)
        self.loader = DataLoader(dataset, batch_size=local, sampler=sampler, collate_fn=collate,
                                 num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=torch.cuda.is_available())
        self._iterator = iter(self.loader)

    def next(self, device: torch.device) -> dict[str, Any]:
        """The next batch; with ``skip_bad`` its unreadable samples are reported and left out (a
        batch left empty is followed by the next one)."""
        while True:
            batch = next(self._iterator)
            self.consumed += self.global_batch
            for path, reason in batch["skipped"]:
                self.on_skip(path, reason)
            if batch["image"] is not None:
                break
        out = {"image": batch["image"].to(device, non_blocking=True)}
        if "label" in batch:
            out["label"] = batch["label"].to(device, non_blocking=True)
        return out
