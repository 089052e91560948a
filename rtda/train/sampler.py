"""An endless, resumable, shardable sampler: the data order as a pure function of its position.

Training runs for a number of iterations, not epochs, and must resume exactly. This sampler
yields ``(index, augmentation_seed)`` pairs (which :class:`rtda.data.SegmentationDataset`
accepts): epoch ``e`` is the permutation drawn from ``(seed, e)``, and sample ``k`` of it gets the
augmentation seed drawn from ``(seed, e, k)``. Its state is a single integer, the number of
samples the training loop has consumed, so a checkpoint can store it and a resumed run reads the
same samples with the same augmentations, whatever DataLoader workers prefetched before the stop.
With ``num_replicas > 1`` each rank takes every ``num_replicas``-th sample of the same global order,
so N processes with batch B/N see exactly the samples of one process with batch B. With
``weights`` (rare-class sampling), sample ``k`` is drawn with replacement from ``weights`` by a
generator seeded with ``(seed, k)``: still a pure function of the position.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, start: int = 0,
                 num_replicas: int = 1, rank: int = 0, weights: np.ndarray | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (size,) or (weights < 0).any() or not weights.sum() > 0:
                raise ValueError(f"weights must be {size} non-negative numbers with a positive "
                                 f"sum, got shape {weights.shape}")
            weights = weights / weights.sum()
        self.weights = weights
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.start, self.num_replicas, self.rank = start, num_replicas, rank
        self._cached: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            order = (np.random.default_rng((self.seed, epoch)).permutation(self.size)
                     if self.shuffle else np.arange(self.size))
            self._cached = (epoch, order)
        return self._cached[1]

    def global_sample(self, position: int) -> tuple[int, int]:
        """(dataset index, augmentation seed) of the ``position``-th sample of the global order."""
        if self.weights is not None:
            rng = np.random.default_rng((self.seed, 1, position, 0))
            return int(rng.choice(self.size, p=self.weights)), int(rng.integers(2**62))
        epoch, offset = divmod(position, self.size)
        index = int(self._order(epoch)[offset])
        augmentation = int(np.random.default_rng((self.seed, epoch, offset)).integers(2**62))
        return index, augmentation

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        while True:
            yield self.global_sample(position)
            position += self.num_replicas

    def __len__(self) -> int:  # endless; DataLoader only needs a length for len(loader)
        return 2**62
