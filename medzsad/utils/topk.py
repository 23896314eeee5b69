"""The k items of highest priority in a stream, in bounded memory (the review's worst errors, its panel)."""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class TopK(Generic[T]):
    """The ``k`` items of highest priority offered so far; among equal priorities the earlier one wins,
    so offering the same stream in the same order always keeps the same items (and offering the kept
    items of consecutive blocks, in block order, keeps what one pass over all of them keeps)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._heap: list[tuple[float, int, T]] = []
        self._counter = itertools.count()

    def would_keep(self, priority: float) -> bool:
        """Whether an item of ``priority`` offered now would be kept (lets callers skip building it)."""
        return self.k > 0 and (len(self._heap) < self.k or priority > self._heap[0][0])

    def offer(self, priority: float, item: T) -> None:
        if self.k <= 0:
            return
        entry = (priority, -next(self._counter), item)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def best_first(self) -> list[T]:
        return [item for _, _, item in sorted(self._heap, key=lambda entry: entry[:2], reverse=True)]
