"""`CTRDataModule`: any `CTRSource` (reader or generator) as a Lightning data module."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from rankitect.data.cache import PreprocessCache
from rankitect.data.source import SPLITS, CTRData, CTRSource, CTRSplit, OnBadRow, check_on_bad_row
from rankitect.data.spec import FeatureSpec
from rankitect.data.synthetic import normalized_entropy

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class BatchIndexSampler(Sampler[torch.Tensor]):
    """Yields whole batches of row indices (int64 tensors), so fetching a batch is one gather.

    With ``shuffle`` each epoch is a fresh permutation drawn from ``(seed, epoch)``. Lightning
    calls `set_epoch` before each epoch, and from the first call on the sampler stays at the
    epoch set, as torch's `DistributedSampler` does: DataLoader iterators may iterate a sampler
    twice for one pass (Lightning's `DistributedSamplerWrapper` lists its sampler's batches at
    each ``iter()``). Without `set_epoch` every pass advances to the next epoch.

    Resumable mid-epoch: ``state_dict()`` is the epoch of the pass under way and the batches it
    has yielded; a sampler given it by ``load_state_dict`` starts its next pass at the next of
    that pass's batches, without drawing the skipped ones' rows. torchdata's
    `StatefulDataLoader` (the training loader of `CTRDataModule`) saves and restores the
    sampler through these two methods, also with worker processes, since the sampler runs in
    the main process.
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self._epoch_set = False  # set_epoch was called: no advancing by itself
        self._skip = 0  # batches the next pass skips (set by load_state_dict)
        self._pass_epoch: int | None = None  # the pass under way, if one has started
        self._yielded = 0  # batches that pass has yielded

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_set = epoch, True

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch, skip = self.epoch, self._skip
        self.epoch, self._skip = epoch + (not self._epoch_set), 0
        self._pass_epoch, self._yielded = epoch, skip
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        for batch in order[: len(self) * self.batch_size].split(self.batch_size)[skip:]:
            # counted before the yield: a worker loader takes the state right after a draw
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if self._pass_epoch is None:  # no pass since construction or load_state_dict
            return {"epoch": self.epoch, "batches": self._skip}
        return {"epoch": self._pass_epoch, "batches": self._yielded}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # a finished pass (saved on its last batch): the next epoch
            epoch, batches = epoch + 1, 0
        self.epoch, self._skip, self._pass_epoch = epoch, batches, None


class SplitBatches(Dataset):
    """A split indexed by whole batches of rows: ``ds[idx]`` -> ``(dense, sparse, label)``."""

    def __init__(self, split: CTRSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: torch.Tensor) -> Batch:
        s = self.split
        return s.dense[idx], s.sparse[idx], s.label[idx]


def _keep(batch: Batch) -> Batch:
    return batch  # the batch is already collated; a module-level function pickles for workers


class ResumableLoader(StatefulDataLoader):
    """torchdata's `StatefulDataLoader` (the training loader), building its iterator at the first
    batch rather than at ``iter()``, and never just to answer ``state_dict()``.

    Lightning saves the loader's ``state_dict()`` into every checkpoint and, on a mid-epoch
    resume, hands it back with ``load_state_dict``, calls ``iter()`` and only then the
    sampler's ``set_epoch``. `StatefulDataLoader` restores the sampler position when the
    iterator is built: with the `BatchIndexSampler` from its own state (epoch included), but
    under DDP Lightning wraps the sampler in a `DistributedSamplerWrapper`, which has no state,
    and torchdata skips that many of the wrapper's batches; built at ``iter()``, the wrapper
    would still be at epoch 0 and a resume in a later epoch would continue another permutation.
    """

    def __iter__(self) -> Iterator[Batch]:
        yield from super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        # Without an iterator (before the first batch; after the fit, when Lightning has dropped
        # it) torchdata would build one to ask, drawing a seed from the global RNG, which a
        # search's checkpoint saves just after, and starting workers. No pass is under way then:
        # the next starts afresh at the epoch Lightning sets, or where a loaded state says.
        if self._iterator is None:
            return self.next_iter_state or {}
        return super().state_dict()


def check_loader_options(
    on_bad_row: str, batch_size: int, eval_batch_size: int | None, num_workers: int
) -> None:
    """The options every data module shares, checked where they enter."""
    check_on_bad_row(on_bad_row)
    if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
        raise ValueError("batch sizes must be >= 1")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")


def shard_of(split: CTRSplit, index: int, count: int) -> CTRSplit:
    """Rows ``[index * N / count, (index + 1) * N / count)`` of ``split``: contiguous ranges, so
    shards of time-ordered data (Criteo's days, a log read in order) are periods of time."""
    n = len(split)
    lo, hi = index * n // count, (index + 1) * n // count
    return CTRSplit(
        split.dense[lo:hi],
        split.sparse[lo:hi],
        split.label[lo:hi],
        None if split.prob is None else split.prob[lo:hi],
    )


def check_shard(shard: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """``data.shard`` ({index, count}) as ``(index, count)``, or None for all the data."""
    if shard is None:
        return None
    if not isinstance(shard, Mapping) or set(shard) != {"index", "count"}:
        raise ValueError(f"data.shard must be {{index: i, count: S}} or null, got {shard!r}")
    index, count = shard["index"], shard["count"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
        raise ValueError(f"data.shard.index and data.shard.count must be ints, got {shard!r}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"data.shard needs 0 <= index < count, got index {index}, count {count}")
    return index, count


class CTRDataModule(L.LightningDataModule):
    """Train / val / test batches ``(dense float32 (B, n_dense), sparse int64 (B, n_sparse),
    label float32 (B,))`` from a source built by Hydra (`CategoricalCSVReader`,
    `CriteoReader`, `SyntheticCTR`, or anything following `CTRSource`).

    Args:
        source: the reader or generator.
        batch_size: training batch size; ``eval_batch_size`` (default: the same) for val/test.
        num_workers: DataLoader worker processes (batches are single gathers from in-memory
            tensors, so 0 is usually fastest).
        seed: seed of the training shuffle (each epoch draws its permutation from seed+epoch).
        shuffle: shuffle the training split; val/test are never shuffled.
        drop_last: drop the last incomplete training batch.
        pin_memory: passed to the DataLoaders.
        cache: keep parsed files in the preprocessing cache under ``cache_dir`` (default
            ``$RANKITECT_CACHE`` or ``~/.cache/rankitect``); sources whose fingerprint is
            ``None`` (the synthetic generator) are never cached.
        on_bad_row: ``"error"`` (default) raises `DataFormatError` at the first malformed row;
            ``"skip"`` drops such rows, logs a warning with the count and stores the counts in
            `bad_rows`.
        shard: ``{index: i, count: S}``: train on the ``i``-th of ``S`` contiguous row ranges of
            the training split only (`shard_of`; val and test stay whole), as each process of
            a sharded search (DistDNAS, docs/search.md) does. None: all the data.
    """

    def __init__(
        self,
        source: CTRSource,
        batch_size: int = 4096,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        pin_memory: bool = False,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        on_bad_row: OnBadRow = "error",
        shard: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(source, CTRSource):
            raise TypeError(f"source must have fingerprint() and load(), got {type(source)}")
        check_loader_options(on_bad_row, batch_size, eval_batch_size, num_workers)
        self.source = source
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.pin_memory = bool(pin_memory)
        self.on_bad_row: OnBadRow = on_bad_row
        self.cache = PreprocessCache(cache_dir) if cache else None
        self.bad_rows: dict[str, int] = {}
        self.shard = check_shard(shard)
        self._data: CTRData | None = None
        self._built: set[str] = set()  # cache entries this instance parsed itself

    def _cache_key(self) -> str | None:
        return None if self.cache is None else self.cache.key(self.source, self.on_bad_row)

    def prepare_data(self) -> None:
        """Parses the source into the cache if it is not there yet (Lightning runs this once
        per node, before `setup` on every process)."""
        key = self._cache_key()
        if key is not None and not self.cache.has(key):
            self._build(key)

    def _build(self, key: str) -> CTRData:
        data = self.source.load(self.on_bad_row)
        self.cache.store(key, data, info={"fingerprint": self.source.fingerprint()})
        self._built.add(key)
        return data

    def setup(self, stage: str | None = None) -> None:
        if self._data is not None:
            return
        key = self._cache_key()
        if key is None:
            data = self.source.load(self.on_bad_row)
        elif (data := self.cache.load(key)) is not None:
            skipped = sum(data.bad_rows.values())
            if skipped and key not in self._built:  # else the parse has just warned
                log.warning("cached data set %s was built skipping %d bad row(s)", key, skipped)
        else:
            data = self._build(key)
        if self.shard is not None:
            index, count = self.shard
            if count > len(data.splits["train"]):
                raise ValueError(
                    f"data.shard.count={count} is above the {len(data.splits['train'])} rows "
                    "of the training split: every shard needs rows"
                )
            train = shard_of(data.splits["train"], index, count)
            data = dataclasses.replace(data, splits={**data.splits, "train": train})
            log.info("data.shard %d of %d: %d training rows", *self.shard, len(train))
        self._data = data
        self.bad_rows = dict(data.bad_rows)

    @property
    def data(self) -> CTRData:
        if self._data is None:
            raise RuntimeError("CTRDataModule: call setup() before using the data")
        return self._data

    @property
    def feature_spec(self) -> FeatureSpec:
        return self.data.spec

    def split(self, name: str) -> CTRSplit:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.data.splits[name]

    def true_probabilities(self, split: str) -> torch.Tensor:
        """The true click probability of each row of ``split`` (synthetic sources only)."""
        prob = self.split(split).prob
        if prob is None:
            raise ValueError(
                f"{type(self.source).__name__} has no true click probabilities "
                "(only synthetic sources know them)"
            )
        return prob

    def bayes_ne(self, split: str) -> float:
        """NE of the true probabilities on ``split``: the best NE any model can expect."""
        return normalized_entropy(self.true_probabilities(split), self.split(split).label)

    def _loader(self, split: str, train: bool) -> DataLoader:
        data = self.split(split)
        sampler = BatchIndexSampler(
            len(data),
            self.batch_size if train else self.eval_batch_size,
            shuffle=train and self.shuffle,
            seed=self.seed,
            drop_last=train and self.drop_last,
        )
        # Lightning checkpoints the state of a train loader that has one and restores it on a
        # mid-epoch resume; StatefulDataLoader's state holds the sampler's (epoch, batches).
        loader = ResumableLoader if train else DataLoader
        return loader(
            SplitBatches(data),
            batch_size=None,  # the sampler yields whole batches
            sampler=sampler,
            collate_fn=_keep,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
