"""StreamingCriteoDataset: byte-range shards over ranks x workers, parity with CriteoReader."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

import rankitect.data.streaming as streaming
from rankitect.cli.config import conf_dir
from rankitect.data import (
    CriteoReader,
    CriteoStream,
    DataFormatError,
    StreamingCriteoDataset,
    StreamingCTRDataModule,
)

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/criteo_sample/criteo_sample.csv"


def criteo_lines(first_id: int, n: int, seed: int) -> list[str]:
    """Criteo TSV rows whose I1 is the row id (readable back with ``log1p=False``); the other
    fields vary in length, are often empty, and some integers are negative."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    ints = rng.integers(-3, 10 ** rng.integers(1, 7, (n, 12)))
    int_empty = rng.random((n, 12)) < 0.2
    cats = rng.integers(0, 2**32, (n, 26))
    cat_empty = rng.random((n, 26)) < 0.15
    lines = []
    for r in range(n):
        fields = [str(label[r]), str(first_id + r)]
        fields += ["" if e else str(v) for v, e in zip(ints[r], int_empty[r], strict=True)]
        fields += ["" if e else f"{v:08x}" for v, e in zip(cats[r], cat_empty[r], strict=True)]
        lines.append("\t".join(fields))
    return lines


def write(path: Path, lines: list[str], trailing_newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""))
    return path


@pytest.fixture
def two_files(tmp_path):
    """3000 + 1500 rows with ids 0..4499; the second file has no trailing newline."""
    a = write(tmp_path / "day_0", criteo_lines(0, 3000, seed=1))
    b = write(tmp_path / "day_1", criteo_lines(3000, 1500, seed=2), trailing_newline=False)
    return [a, b]


def ids_of(batches) -> np.ndarray:
    cols = [dense[:, 0].numpy() for dense, _, _ in batches]
    return np.concatenate([np.empty(0, np.float32), *cols]).astype(np.int64)


def test_two_ranks_by_two_workers_see_every_row_exactly_once(two_files):
    per_rank = []
    for rank in range(2):
        ds = StreamingCriteoDataset(two_files, batch_size=100, log1p=False, rank=rank, world_size=2)
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
        assert all(len(b[2]) <= 100 for b in batches)
        assert all(b[0].shape[1] == 13 and b[1].shape[1] == 26 for b in batches)
        per_rank.append(ids_of(batches))
    # each rank reads about half the bytes; together they read every row once
    assert all(1500 < len(ids) < 3000 for ids in per_rank)
    assert np.array_equal(np.sort(np.concatenate(per_rank)), np.arange(4500))


def test_any_number_of_shards_reads_each_row_once_in_file_order(tmp_path):
    path = write(tmp_path / "small.tsv", criteo_lines(0, 12, seed=3))
    for n_shards in range(1, 40):  # more shards than rows: some shards are empty
        seen = [
            ids_of(StreamingCriteoDataset(path, 5, log1p=False, rank=r, world_size=n_shards))
            for r in range(n_shards)
        ]
        assert np.array_equal(np.concatenate(seen), np.arange(12)), n_shards


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_a_cut_at_any_byte_gives_each_line_to_the_range_holding_its_start(tmp_path, line_end):
    lines = criteo_lines(0, 4, seed=5)
    path = tmp_path / "cut.tsv"
    path.write_bytes(line_end.join(lines).encode())  # no line end after the last line
    text = path.read_bytes()
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == 10]
    ds = StreamingCriteoDataset(path, 100, log1p=False, block_bytes=64)  # lines outgrow blocks

    def ids(lo, hi):  # I1 (row ids) of the rows parsed from the lines starting in [lo, hi)
        cols = [dense[:, 0] for _, dense, _ in ds._read_range(0, lo, hi)]
        return np.concatenate([np.empty(0, np.float32), *cols]).astype(np.int64)

    near_starts = {s + d for s in starts[1:] for d in (-2, -1, 0, 1, 2)}  # at, before, after
    for cut in sorted(near_starts | set(range(0, len(text) + 1, 23)) | {len(text)}):
        left, right = ids(0, cut), ids(cut, len(text))
        assert np.array_equal(left, [i for i, s in enumerate(starts) if s < cut]), cut
        assert np.array_equal(np.concatenate([left, right]), np.arange(4)), cut


def test_no_shard_reads_much_more_than_its_byte_range(two_files, monkeypatch):
    read = []

    class Counting:
        def __init__(self, f):
            self.f, self.n = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            read.append(self.n)
            self.f.close()

        def readinto(self, buf):
            k = self.f.readinto(buf)
            self.n += k
            return k

        def readline(self):
            line = self.f.readline()
            self.n += len(line)
            return line

        def seek(self, offset):
            return self.f.seek(offset)

        def tell(self):
            return self.f.tell()

    def counting_open(path, mode="r"):
        return Counting(builtins.open(path, mode))

    monkeypatch.setattr(streaming, "open", counting_open, raising=False)
    total = sum(p.stat().st_size for p in two_files)
    block = 4096
    for rank in range(4):
        read.clear()
        ds = StreamingCriteoDataset(two_files, 64, rank=rank, world_size=4, block_bytes=block)
        list(ds)
        assert 0 < sum(read) <= total / 4 + 2 * (block + 1000), (rank, read)


def test_streamed_rows_equal_criteo_reader_hash_output(two_files):
    path = two_files[0]
    options = {"hash_buckets": 1000, "dense_fill": -1.0}
    want = CriteoReader(train=path, val=path, test=path, encoding="hash", **options).load()
    want = want.splits["train"]
    # 4 shards (2 ranks x 2 workers, simulated) are contiguous byte ranges in file order, so
    # their batches in shard order are the file's rows in order
    batches = [
        b
        for rank in range(4)
        for b in StreamingCriteoDataset(path, 128, rank=rank, world_size=4, **options)
    ]
    dense, sparse, label = (torch.cat(t) for t in zip(*batches, strict=True))
    assert torch.equal(dense, want.dense)
    assert torch.equal(sparse, want.sparse)
    assert torch.equal(label, want.label)
    assert dense.dtype == torch.float32 and sparse.dtype == torch.int64
    assert int(sparse.max()) <= 1000 and (dense == -1.0).any()  # fills and ids as configured


@pytest.mark.skipif(not SAMPLE.is_file(), reason="criteo_sample.csv not found")
def test_csv_with_header_equals_reader_too():
    """The real-data fixture: header line, comma separator, decimals such as 260.0."""
    want = CriteoReader(train=SAMPLE, val=SAMPLE, test=SAMPLE, encoding="hash").load()
    ds = [StreamingCriteoDataset(SAMPLE, 64, rank=r, world_size=3) for r in range(3)]
    dense, sparse, label = (torch.cat(t) for t in zip(*[b for d in ds for b in d], strict=True))
    assert ds[0].feature_spec == want.spec
    split = want.splits["train"]
    assert torch.equal(dense, split.dense) and torch.equal(sparse, split.sparse)
    assert torch.equal(label, split.label) and len(label) == 200


def test_bad_row_names_file_and_line_or_is_skipped_and_counted(tmp_path, caplog):
    lines = criteo_lines(0, 3000, seed=4)
    fields = lines[2499].split("\t")
    fields[3] = "x7"  # I3 of line 2500
    lines[2499] = "\t".join(fields)
    lines[999] = "\t".join(lines[999].split("\t")[:-1])  # line 1000: 39 fields
    path = write(tmp_path / "bad.tsv", lines)

    errors = []
    for rank in range(4):
        try:
            list(StreamingCriteoDataset(path, 64, rank=rank, world_size=4))
        except DataFormatError as e:
            errors.append(e)
    assert sorted(e.line for e in errors) == [1000, 2500]
    late = max(errors, key=lambda e: e.line)
    assert late.path == str(path) and late.column == "I3" and "'x7'" in str(late)
    assert f"{path}, line 2500, column 'I3'" in str(late)

    kept, skipped = [], 0
    for rank in range(4):
        ds = StreamingCriteoDataset(
            path, 64, log1p=False, on_bad_row="skip", rank=rank, world_size=4
        )
        kept.append(ids_of(ds))
        skipped += ds.bad_rows.get(str(path), 0)
    assert skipped == 2
    assert np.array_equal(np.sort(np.concatenate(kept)), np.setdiff1d(np.arange(3000), [999, 2499]))
    # the warnings locate the first bad row of each shard by its byte offset
    offsets = np.cumsum([0] + [len(line) + 1 for line in lines])
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"first at byte offset {offsets[999]}: expected 40 fields, found 39" in warned
    assert f"first at byte offset {offsets[2499]}, column 'I3'" in warned


def test_shuffle_changes_order_not_rows_and_differs_by_epoch(two_files):
    def stream(**kw):
        return StreamingCriteoDataset(
            two_files,
            50,
            log1p=False,
            rank=0,
            world_size=1,
            shuffle_buffer=800,
            block_bytes=8192,
            **kw,
        )

    plain = ids_of(stream())
    ds = stream(shuffle=True, seed=7)
    e0, e1 = ids_of(ds), ids_of(ds)  # a pass without set_epoch moves on to the next epoch
    ds.set_epoch(0)
    again = ids_of(ds)
    assert np.array_equal(plain, np.arange(4500))
    for order in (e0, e1):
        assert np.array_equal(np.sort(order), plain)
        assert np.mean(order != plain) > 0.9
    assert np.array_equal(again, e0)
    assert np.mean(e0 != e1) > 0.9
    # bounded buffer: the first rows out are drawn from the first ~800 rows read (blocks of
    # 8 KiB hold ~80 rows), not from the whole file
    assert e0[:400].max() < 800 + 200


def test_batches_per_shard_gives_every_shard_the_same_count(two_files):
    def shard(rank, k, **kw):
        return StreamingCriteoDataset(
            two_files, 100, rank=rank, world_size=4, batches_per_shard=k, log1p=False, **kw
        )

    held = [len(ids_of(shard(r, None))) for r in range(4)]  # rows in each shard's range
    assert sum(held) == 4500
    fits = min(held) // 100
    for k in (3, fits, 40):  # fewer full batches than every shard holds, and more
        for rank in range(4):
            for shuffle in (False, True):
                ds = shard(rank, k, shuffle=shuffle, shuffle_buffer=800, block_bytes=8192)
                batches = list(ds)
                assert len(batches) == k and all(len(b[2]) == 100 for b in batches)
                ids = ids_of(batches)
                if k <= fits:  # a row comes round again only once every row has been out
                    assert len(np.unique(ids)) == len(ids), (k, rank, shuffle)
                else:  # 4000 rows from a ~1125-row range: the range is read again
                    assert np.array_equal(np.unique(ids), np.sort(ids_of(shard(rank, None))))


def test_datamodule_epochs_and_spec(two_files, tmp_path):
    source = CriteoStream(
        root=tmp_path, train="day_*", val="day_1", test=["day_1"], hash_buckets=99
    )
    assert source.files("train") == two_files
    dm = StreamingCTRDataModule(source, batch_size=256, eval_batch_size=1000, shuffle_buffer=1024)
    dm.setup("fit")
    assert dm.feature_spec.sparse_cardinalities == (100,) * 26
    assert dm.feature_spec.dense_names[0] == "I1"
    loader = dm.train_dataloader()
    first, second = (ids_of_dense(loader) for _ in range(2))
    assert len(first) == len(second) == 4500 and not np.array_equal(first, second)
    assert sum(len(b[2]) for b in dm.val_dataloader()) == 1500
    with pytest.raises(DataFormatError, match="missing.tsv"):
        CriteoStream(root=tmp_path, train="missing.tsv").files("train")


def ids_of_dense(loader) -> np.ndarray:
    """Row order of a pass, from the raw-dense column I1 (log1p on; the map is monotone)."""
    return np.concatenate([dense[:, 0].numpy() for dense, _, _ in loader])


def test_rankitect_train_streams_criteo(two_files, tmp_path):
    from rankitect.train import train

    overrides = [
        "data=criteo_stream",
        f"data.source.root={tmp_path}",
        "data.source.train=[day_0]",
        "data.source.val=[day_1]",
        "data.source.test=[day_1]",
        "data.source.hash_buckets=100",
        "data.num_workers=0",
        "data.batch_size=256",
        "model=lr",
        "logger=none",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    results = train(cfg, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["test"]["auc"] == results["test"]["auc"]
    assert 0.0 <= results["test"]["auc"] <= 1.0 and results["val"]["logloss"] > 0
