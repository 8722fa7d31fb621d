"""Streaming Criteo files too large for memory: byte-range shards, collated batches.

`StreamingCriteoDataset` is an `IterableDataset` over one or more Criteo files (label, 13
integer, 26 categorical columns; TSV without header or CSV with one). The files are treated as
one byte space cut into ``world_size * num_workers`` equal ranges, one per (rank, DataLoader
worker) *shard*; a shard reads the lines that *start* inside its range (it seeks to the range
start, skips to the next line start, and stops after the last line starting before the range
end), so every line is read by exactly one shard and no shard reads more than its range plus
one line. Rows are parsed in 1 MiB blocks by the vectorised parser of
`rankitect.data.delimited` and transformed exactly as `CriteoReader(encoding="hash")` does, and
the dataset yields whole batches ``(dense, sparse, label)``: use ``DataLoader(ds,
batch_size=None)``.

`StreamingCTRDataModule` serves such streams to Lightning (``conf/data/criteo_stream.yaml``).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rankitect.data.datamodule import check_loader_options
from rankitect.data.delimited import (
    _NL,
    _PAD,
    CATEGORICAL,
    LABEL,
    NUMERIC,
    _BlockParser,
    complete_lines,
)
from rankitect.data.encoders import hash_ids
from rankitect.data.errors import DataFileNotFoundError, DataFormatError
from rankitect.data.readers import CriteoReader, criteo_layout
from rankitect.data.source import SPLITS, OnBadRow, check_on_bad_row
from rankitect.data.spec import FeatureSpec

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # label (n,), dense (n, 13), sparse (n, 26)

N_DENSE, N_SPARSE = CriteoReader.N_DENSE, CriteoReader.N_SPARSE
KINDS = [LABEL] + [NUMERIC] * N_DENSE + [CATEGORICAL] * N_SPARSE


def _count_newlines(path: Path, end: int) -> int:
    """LF bytes in ``path[:end]``: the line number before a line starting at ``end``. Only
    computed to report an error, so a shard never scans the file before its range otherwise."""
    count, done = 0, 0
    with open(path, "rb") as f:
        while done < end:
            chunk = f.read(min(1 << 24, end - done))
            if not chunk:
                break
            count += chunk.count(b"\n")
            done += len(chunk)
    return count


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        initialised = dist.is_available() and dist.is_initialized()
        rank = (dist.get_rank() if initialised else 0) if rank is None else rank
        world_size = (
            (dist.get_world_size() if initialised else 1) if world_size is None else world_size
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world={world_size}")
    return rank, world_size


class StreamingCriteoDataset(IterableDataset):
    """Batches ``(dense float32 (B, 13), sparse int64 (B, 26), label float32 (B,))`` streamed
    from Criteo files, sharded over ranks and DataLoader workers by byte ranges.

    Args:
        files: the files, read as one stream in this order.
        batch_size: rows per yielded batch; the last batch of a shard's pass is smaller unless
            ``drop_last``.
        sep, header, hash_buckets, dense_fill, log1p: as for `CriteoReader` with
            ``encoding="hash"``, whose transforms are applied, so a streamed row is the same
            tensor row the reader gives (``sep`` / ``header`` are detected per file if None).
        shuffle: shuffle rows within a bounded buffer of ``shuffle_buffer`` rows (memory stays
            bounded; rows move by about the buffer size, not across the whole file). Each epoch
            and shard draws from ``(seed, epoch, shard)``.
        batches_per_shard: None reads each shard's range once (every row exactly once per
            epoch). An int makes every shard yield exactly that many full batches: it stops
            early, or when its range runs out, empties its buffer and reads the range again
            (repeating rows). Ranks then see the same number of batches, which DDP needs (see
            docs/data.md, "Streaming").
        on_bad_row: ``"error"`` raises `DataFormatError` naming the file and 1-based line (the
            lines before the shard are counted only then); ``"skip"`` drops bad rows, counts
            them in `bad_rows` (this process's last pass) and warns once per file and shard
            with the byte offset of the first one.
        rank, world_size: this process's rank; None takes them from ``torch.distributed``
            when it is initialised in the iterating process, else rank 0 of 1 (pass them when
            DataLoader workers are spawned rather than forked).
        block_bytes: bytes parsed at a time.
    """

    def __init__(
        self,
        files: str | Path | Sequence[str | Path],
        batch_size: int = 4096,
        *,
        sep: str | None = None,
        header: bool | None = None,
        hash_buckets: int = 1_000_000,
        dense_fill: float = 0.0,
        log1p: bool = True,
        shuffle: bool = False,
        shuffle_buffer: int = 262_144,
        seed: int = 0,
        drop_last: bool = False,
        batches_per_shard: int | None = None,
        on_bad_row: OnBadRow = "error",
        rank: int | None = None,
        world_size: int | None = None,
        block_bytes: int = 1 << 20,
    ) -> None:
        super().__init__()
        check_on_bad_row(on_bad_row)
        paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
        if not paths:
            raise ValueError("StreamingCriteoDataset needs at least one file")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shuffle and shuffle_buffer < batch_size:
            raise ValueError(f"shuffle_buffer ({shuffle_buffer}) must be >= batch_size")
        if batches_per_shard is not None and batches_per_shard < 1:
            raise ValueError(f"batches_per_shard must be >= 1 or None, got {batches_per_shard}")
        if block_bytes < 1:
            raise ValueError(f"block_bytes must be >= 1, got {block_bytes}")
        self.files = paths
        self.formats = [criteo_layout(p, sep, header) for p in paths]  # also: missing / empty
        self.sizes = [p.stat().st_size for p in paths]
        # Holds the options and applies the reader's own dense transform (log1p, fill).
        self.reader = CriteoReader(
            path=paths[0],
            sep=sep,
            header=header,
            encoding="hash",
            hash_buckets=hash_buckets,
            dense_fill=dense_fill,
            log1p=log1p,
        )
        self.hash_buckets = self.reader.hash_buckets
        self.batch_size, self.drop_last = int(batch_size), bool(drop_last)
        self.shuffle, self.shuffle_buffer, self.seed = bool(shuffle), int(shuffle_buffer), seed
        self.batches_per_shard = batches_per_shard
        self.on_bad_row: OnBadRow = on_bad_row
        self.rank, self.world_size = rank, world_size
        self.block_bytes = int(block_bytes)
        self.epoch = 0
        self.bad_rows: dict[str, int] = {}

    @property
    def feature_spec(self) -> FeatureSpec:
        names = self.formats[0][2]
        return FeatureSpec(
            n_dense=N_DENSE,
            sparse_cardinalities=(self.hash_buckets + 1,) * N_SPARSE,
            dense_names=tuple(names[1 : 1 + N_DENSE]),
            sparse_names=tuple(names[1 + N_DENSE :]),
        )

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose shuffle order the next pass uses (later passes count on from it)."""
        self.epoch = int(epoch)

    def shard(self) -> tuple[int, int]:
        """``(shard, n_shards)`` of the calling process: ``rank * num_workers + worker_id``."""
        rank, world = _resolve_rank(self.rank, self.world_size)
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return rank * n_workers + worker, world * n_workers

    def byte_ranges(self, shard: int, n_shards: int) -> list[tuple[int, int, int]]:
        """``(file index, start, end)`` of each file part of ``shard``'s share of the bytes."""
        total = sum(self.sizes)
        lo, hi = total * shard // n_shards, total * (shard + 1) // n_shards
        parts, offset = [], 0
        for i, size in enumerate(self.sizes):
            a, b = max(lo, offset), min(hi, offset + size)
            if a < b:
                parts.append((i, a - offset, b - offset))
            offset += size
        return parts

    def __iter__(self) -> Iterator[Batch]:
        shard, n_shards = self.shard()
        epoch, self.epoch = self.epoch, self.epoch + 1
        self.bad_rows = {}
        rng = np.random.default_rng([int(self.seed), epoch, shard])
        for label, dense, sparse in self._batches(self._shard_rows(shard, n_shards), rng):
            yield torch.from_numpy(dense), torch.from_numpy(sparse), torch.from_numpy(label)

    def _shard_rows(self, shard: int, n_shards: int) -> Iterator[Rows | None]:
        """The shard's rows in blocks: one pass, or (``batches_per_shard``) passes over its
        range, each followed by ``None``, until the caller has its batches and stops."""
        ranges = self.byte_ranges(shard, n_shards)
        while True:
            n = 0
            for i, start, end in ranges:
                for rows in self._read_range(i, start, end):
                    n += len(rows[0])
                    yield rows
            if self.batches_per_shard is None:
                return
            if n == 0:
                raise DataFormatError(
                    self.files[ranges[0][0]] if ranges else self.files[0],
                    f"shard {shard} of {n_shards} has no rows to fill batches_per_shard="
                    f"{self.batches_per_shard}: use fewer ranks / workers or more data",
                )
            yield None

    def _read_range(self, i: int, start: int, end: int) -> Iterator[Rows]:
        """Parsed rows of the lines of file ``i`` that start in ``[start, end)``."""
        path = self.files[i]
        sep, header, names = self.formats[i]
        parser = _BlockParser(
            path, KINDS, names, ord(sep), self.on_bad_row, header and start == 0, None, None
        )
        buf = np.empty(self.block_bytes + _PAD, np.uint8)
        first_bad_offset = None
        with open(path, "rb") as f:
            if start > 0:  # the line holding byte start-1 belongs to an earlier shard
                f.seek(start - 1)
                f.readline()
            begin = pos = f.tell()  # file offset of buf[0]
            filled, done = 0, pos >= end
            while not done:
                n_read = f.readinto(memoryview(buf)[filled : len(buf) - _PAD])
                filled += n_read
                done = n_read == 0  # end of file
                if done and filled == 0:
                    break
                buf, filled, cut = complete_lines(buf, filled, done)
                if cut == 0:
                    continue
                if pos + cut >= end:  # keep lines starting before `end`: cut after the
                    # line end at or after byte end-1 (buf[cut-1] is a line end, so one exists)
                    k = end - pos - 1
                    cut, done = k + int(np.argmax(buf[k:cut] == _NL)) + 1, True
                lines_before, had_bad = parser.lines_before, parser.first_bad is not None
                try:
                    parser.feed(buf, cut)
                except DataFormatError as e:
                    line = e.line + _count_newlines(path, begin)
                    raise DataFormatError(path, e.reason, line, e.column) from None
                if not had_bad and parser.first_bad is not None:
                    k = parser.first_bad[0] - lines_before  # 1-based line within the block
                    nl = np.flatnonzero(buf[:cut] == _NL)
                    first_bad_offset = pos + (0 if k == 1 else int(nl[k - 2]) + 1)
                label, numeric, keys = parser.parts.pop()
                if len(label):
                    yield label, self.reader._dense(numeric), hash_ids(keys, self.hash_buckets)
                rest = filled - cut
                buf[:rest] = buf[cut:filled]
                filled, pos = rest, pos + cut
        if parser.bad_rows:
            self.bad_rows[str(path)] = self.bad_rows.get(str(path), 0) + parser.bad_rows
            _, col, reason = parser.first_bad
            log.warning(
                "%s: skipped %d bad row(s) in bytes [%d, %d) (on_bad_row='skip'); first at byte "
                "offset %d%s: %s",
                path,
                parser.bad_rows,
                begin,
                pos,
                first_bad_offset,
                f", column {col!r}" if col else "",
                reason,
            )

    def _batches(self, blocks: Iterator[Rows | None], rng: np.random.Generator) -> Iterator[Rows]:
        """Collated batches from row blocks, through the shuffle buffer if ``shuffle``.

        Once the buffer holds ``shuffle_buffer`` rows, full batches are drawn from it in a random
        order until half of it is left, which stays to mix with the rows that come next. Batches
        are gathered one at a time, so the buffer is never copied whole in permuted order. A
        ``None`` block (the range is about to be read again) drains the buffer down to less than
        a batch first, so no row repeats before every row of the range has been out once."""
        b = self.batch_size
        keep = self.shuffle_buffer // 2 if self.shuffle else 0
        fill = self.shuffle_buffer if self.shuffle else b
        pending: list[Rows] = []
        n_pending, n_out = 0, 0
        for block in blocks:
            if block is None:
                if n_pending < b:
                    continue
                retain = 0
            else:
                pending.append(block)
                n_pending += len(block[0])
                if n_pending < fill or n_pending - keep < b:
                    continue
                retain = keep
            rows, pending = _concat(pending), []
            order = rng.permutation(n_pending) if self.shuffle else np.arange(n_pending)
            cut = (n_pending - retain) // b * b
            for s in range(0, cut, b):
                yield _take(rows, order[s : s + b])
                n_out += 1
                if n_out == self.batches_per_shard:
                    return
            pending, n_pending = [_take(rows, order[cut:])], n_pending - cut
        if not n_pending:
            return
        rows = _concat(pending)
        order = rng.permutation(n_pending) if self.shuffle else np.arange(n_pending)
        stop = n_pending if not self.drop_last else n_pending // b * b
        for s in range(0, stop, b):
            yield _take(rows, order[s : s + b])


def _take(rows: Rows, idx: np.ndarray) -> Rows:
    """Rows ``idx`` as new contiguous arrays (a gather, so the source can be freed)."""
    return tuple(a[idx] for a in rows)


def _concat(parts: list[Rows]) -> Rows:
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))


class CriteoStream:
    """Where the streamed Criteo splits are and how their rows are encoded.

    Args:
        root: folder of the files (relative names are taken inside it).
        train, val, test: a file name or glob pattern, or a list of them (patterns expand in
            sorted order; a pattern matching nothing is an error).
        sep, header, hash_buckets, dense_fill, log1p: as for `CriteoReader` with
            ``encoding="hash"`` (a stream cannot build a frequency vocabulary before reading).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        train: str | Sequence[str] = "train.txt",
        val: str | Sequence[str] = "val.txt",
        test: str | Sequence[str] = "test.txt",
        sep: str | None = None,
        header: bool | None = None,
        hash_buckets: int = 1_000_000,
        dense_fill: float = 0.0,
        log1p: bool = True,
    ) -> None:
        self.root = None if root is None else Path(root).expanduser()
        self.patterns = {
            s: [str(p)] if isinstance(p, (str, Path)) else [str(x) for x in p]
            for s, p in zip(SPLITS, (train, val, test), strict=True)
        }
        self.options: dict[str, Any] = {
            "sep": sep,
            "header": header,
            "hash_buckets": int(hash_buckets),
            "dense_fill": float(dense_fill),
            "log1p": bool(log1p),
        }

    def _not_found(self, path: Path, split: str, what: str) -> DataFileNotFoundError:
        names = self.patterns[split]
        shown = names if len(names) <= 4 else [*names[:2], "...", names[-1]]
        return DataFileNotFoundError(
            path,
            f"{what} (split {split!r} reads {split}=[{', '.join(shown)}] under "
            f"root={self.root}); name your files with data.source.root (their folder) and "
            "data.source.train / val / test (file names or glob patterns, e.g. "
            "'data.source.train=[train_part_*]'), see docs/data.md, \"Streaming\"",
        )

    def files(self, split: str) -> list[Path]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        out: list[Path] = []
        for pattern in self.patterns[split]:
            path = Path(pattern).expanduser()
            if self.root is not None and not path.is_absolute():
                path = self.root / path
            if glob.has_magic(str(path)):
                matches = sorted(Path(p) for p in glob.glob(str(path)))
                if not matches:
                    raise self._not_found(path, split, "no file matches")
                out += matches
            elif not path.is_file():
                raise self._not_found(path, split, "file not found")
            else:
                out.append(path)
        if not out:
            raise ValueError(f"CriteoStream: no files given for split {split!r}")
        return out

    def dataset(self, split: str, **kwargs: Any) -> StreamingCriteoDataset:
        """The split's stream; ``kwargs`` go to `StreamingCriteoDataset`."""
        return StreamingCriteoDataset(self.files(split), **self.options, **kwargs)


class _EpochLoader(DataLoader):
    """Sets the dataset's epoch before each pass. Lightning calls ``set_epoch`` only on
    samplers, and workers hold copies of the dataset made when each pass starts (the loaders
    are not persistent), so without this every epoch would replay epoch 0's shuffle."""

    def __init__(self, dataset: StreamingCriteoDataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.passes = 0

    def __iter__(self):
        self.dataset.set_epoch(self.passes)
        self.passes += 1
        return super().__iter__()


class StreamingCTRDataModule(L.LightningDataModule):
    """Train / val / test batches streamed from Criteo files (`CriteoStream`), for files too
    large for memory. Batches are those of `CTRDataModule`.

    Every split is a `StreamingCriteoDataset` sharded over ranks (from the attached trainer, or
    ``torch.distributed``) and DataLoader workers; the training split is shuffled within
    ``shuffle_buffer`` rows. Under DDP set ``batches_per_shard`` (or ``trainer.
    limit_train_batches`` below the smallest rank's count): ranks reading different byte
    ranges yield different numbers of batches otherwise, and DDP waits for the missing ones.
    ``batches_per_shard`` applies to the training split only; evaluation reads every row once.
    """

    def __init__(
        self,
        source: CriteoStream,
        batch_size: int = 4096,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 262_144,
        drop_last: bool = False,
        pin_memory: bool = False,
        batches_per_shard: int | None = None,
        on_bad_row: OnBadRow = "error",
    ) -> None:
        super().__init__()
        check_loader_options(on_bad_row, batch_size, eval_batch_size, num_workers)
        self.source = source
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.shuffle, self.shuffle_buffer = bool(shuffle), int(shuffle_buffer)
        self.drop_last, self.pin_memory = bool(drop_last), bool(pin_memory)
        self.batches_per_shard = batches_per_shard
        self.on_bad_row: OnBadRow = on_bad_row
        self._streams: dict[str, StreamingCriteoDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._streams:
            return
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (None, None)
        common = {"on_bad_row": self.on_bad_row, "rank": rank, "world_size": world}
        self._streams["train"] = self.source.dataset(
            "train",
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            shuffle_buffer=max(self.shuffle_buffer, self.batch_size),
            seed=self.seed,
            drop_last=self.drop_last,
            batches_per_shard=self.batches_per_shard,
            **common,
        )
        for split in ("val", "test"):
            self._streams[split] = self.source.dataset(
                split, batch_size=self.eval_batch_size, **common
            )
        if _resolve_rank(rank, world)[1] > 1 and self.batches_per_shard is None:
            log.warning(
                "streaming under DDP without data.batches_per_shard: ranks may get different "
                "numbers of training batches and stall; set it or trainer.limit_train_batches"
            )

    def split(self, name: str) -> StreamingCriteoDataset:
        """The stream of split ``name`` (rows are not held in memory)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        if not self._streams:
            raise RuntimeError("StreamingCTRDataModule: call setup() before using the data")
        return self._streams[name]

    @property
    def feature_spec(self) -> FeatureSpec:
        return self.split("train").feature_spec

    @property
    def bad_rows(self) -> dict[str, int]:
        """Rows skipped in the last pass of each split run in this process (``num_workers=0``;
        with workers the counts stay in the worker processes, which only log warnings)."""
        out: dict[str, int] = {}
        for stream in self._streams.values():
            for path, n in stream.bad_rows.items():
                out[path] = out.get(path, 0) + n
        return out

    def _loader(self, split: str) -> DataLoader:
        return _EpochLoader(
            self.split(split),
            batch_size=None,  # the dataset yields whole batches
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
