"""Seeded, resumable sample streams and the dataset mixture that forms batches.

`SourceStream` turns a reader into an endless stream over epochs:
  - each epoch visits the reader's files in an order shuffled from (seed, name, epoch);
  - inside a file, records are read in blocks of `block_size` and each block is permuted from
    (seed, name, epoch, file, block) — a shuffle buffer whose state is just a position;
  - its state (epoch, file, block, the reader position where the block starts, samples taken from
    it) is a few integers, and `load_state` resumes exactly by seeking to that position and
    re-reading one block, never by replaying the epoch.

`Mixture` draws, for every batch, one dataset with probability proportional to its ratio (seeded per
batch index, like the official MultiIterLoader picks a loader per step), and takes a global batch
(batch_size x world_size) from it; rank r keeps its slice, so every rank holds the same state.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from typing import Any, Iterator

from training.datasets import DatasetFormatError, Reader, Sample
from training.negatives import NegativePairs
from training.seeding import derive_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """A sample as drawn: `draw` is its number in its source's stream (seeds per-sample choices)."""

    sample: Sample
    source: str
    draw: int


class SourceStream:
    def __init__(self, reader: Reader, seed: int, shuffle: bool = True, block_size: int = 1000):
        if block_size < 1:
            raise ValueError(f"{reader.name}: block_size must be >= 1")
        self.reader = reader
        self.name = reader.name
        self.seed = seed
        self.shuffle = shuffle
        self.block_size = block_size if shuffle else 1
        self.state: dict[str, Any] = {"epoch": 0, "unit": 0, "block": 0, "block_start": None, "taken": 0, "drawn": 0, "epoch_samples": 0}
        self._iter: Iterator | None = None
        self._block: list[tuple[tuple, Sample]] | None = None

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.state)

    def load_state(self, state: dict[str, Any]) -> None:
        self.state = copy.deepcopy(state)
        if self.state["block_start"] is not None:
            self.state["block_start"] = tuple(self.state["block_start"])
        self._close()
        if self.state["block_start"] is not None:
            self._iter = self.reader.read_unit(self._unit_order()[self.state["unit"]], self.state["block_start"])
            self._block = self._read_block()
            if len(self._block) < self.state["taken"]:
                raise RuntimeError(f"{self.name}: the data changed since the checkpoint (block shorter than its taken count)")

    # ---- iteration ---------------------------------------------------------------------------
    def _unit_order(self) -> list[int]:
        order = list(range(len(self.reader.units)))
        if self.shuffle:
            random.Random(derive_seed(self.seed, self.name, "units", self.state["epoch"])).shuffle(order)
        return order

    def _close(self) -> None:
        if self._iter is not None and hasattr(self._iter, "close"):
            self._iter.close()
        self._iter = None
        self._block = None

    def _read_block(self) -> list[tuple[tuple, Sample]]:
        block = []
        for item in self._iter:
            block.append(item)
            if len(block) == self.block_size:
                break
        if self.shuffle and len(block) > 1:
            s = self.state
            random.Random(derive_seed(self.seed, self.name, "block", s["epoch"], s["unit"], s["block"])).shuffle(block)
        return block

    def __iter__(self):
        return self

    def __next__(self) -> Item:
        s = self.state
        while self._block is None or s["taken"] >= len(self._block):
            if self._block is not None:  # the current block is used up: the next one follows in the same file
                s["block"] += 1
                s["block_start"], s["taken"] = None, 0
            order = self._unit_order()
            if self._iter is None:
                if s["unit"] >= len(order):
                    if s["epoch_samples"] == 0:
                        raise DatasetFormatError(", ".join(self.reader.units), "no valid samples in a whole pass over the dataset", record=self.name)
                    s.update(epoch=s["epoch"] + 1, unit=0, block=0, block_start=None, taken=0, epoch_samples=0)
                    log.debug("%s: starting epoch %d", self.name, s["epoch"])
                    continue
                self._iter = self.reader.read_unit(order[s["unit"]], None)
            block = self._read_block()
            if not block:  # this file is done
                self._close()
                s.update(unit=s["unit"] + 1, block=0, block_start=None, taken=0)
                continue
            self._block = block
            # the block's start is the smallest reader position in it (blocks are permuted)
            s["block_start"], s["taken"] = min(pos for pos, _ in block), 0
        _, sample = self._block[s["taken"]]
        s["taken"] += 1
        s["drawn"] += 1
        s["epoch_samples"] += 1
        return Item(sample=sample, source=self.name, draw=s["drawn"] - 1)


class NegativeStream:
    """`NegativePairs` as a stream: its state is the number of pairs drawn."""

    def __init__(self, pairs: NegativePairs):
        self.pairs = pairs
        self.name = pairs.name
        self.state = {"drawn": 0}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def __iter__(self):
        return self

    def __next__(self) -> Item:
        index = self.state["drawn"]
        self.state["drawn"] += 1
        return Item(sample=self.pairs.pair(index), source=self.name, draw=index)


class Mixture:
    """Batches drawn from several streams by ratio; state = batches drawn + every stream's state."""

    def __init__(self, streams: dict[str, SourceStream | NegativeStream], ratios: dict[str, float], seed: int,
                 batch_size: int, world_size: int = 1, rank: int = 0):
        if not streams:
            raise ValueError("no datasets")
        for name in streams:
            if ratios.get(name, 0) <= 0:
                raise ValueError(f"dataset {name!r}: ratio must be > 0, got {ratios.get(name)}")
        self.streams = streams
        self.names = list(streams)
        self.weights = [float(ratios[n]) for n in self.names]
        self.seed = seed
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.batches = 0

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "streams": {n: s.state_dict() for n, s in self.streams.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        missing = set(self.streams) - set(state["streams"])
        if missing:
            raise ValueError(f"the checkpoint has no data position for datasets {sorted(missing)}; were datasets added?")
        self.batches = state["batches"]
        for name, stream in self.streams.items():
            stream.load_state(state["streams"][name])

    def choose(self, batch_index: int) -> str:
        if len(self.names) == 1:
            return self.names[0]
        rng = random.Random(derive_seed(self.seed, "mixture", batch_index))
        return rng.choices(self.names, weights=self.weights, k=1)[0]

    def next_batch(self) -> tuple[str, list[Item]]:
        """(dataset name, this rank's items) of the next batch."""
        name = self.choose(self.batches)
        stream = self.streams[name]
        items = [next(stream) for _ in range(self.batch_size * self.world_size)]
        self.batches += 1
        return name, items[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
