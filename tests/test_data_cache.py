"""The preprocessing cache: hits skip parsing, keys follow files and options, writes are atomic
and failed parses leave nothing behind."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import rankitect.data.cache as cache_module
from rankitect.data import (
    CategoricalCSVReader,
    CTRDataModule,
    DataFormatError,
    PreprocessCache,
    SyntheticCTR,
)


def _csv_dir(tmp_path, rows=("1,a,x", "0,b,y", "1,a,z")):
    root = tmp_path / "data"
    root.mkdir()
    for f in ("train.csv", "valid.csv", "test.csv"):
        (root / f).write_text("label,f1,f2\n" + "\n".join(rows) + "\n")
    return root


class _CountingReader(CategoricalCSVReader):
    """Counts calls of `load`, i.e. of the parse the cache should skip."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loads = 0

    def load(self, on_bad_row="error"):
        self.loads += 1
        return super().load(on_bad_row)


def _ready(source, cache_dir, **kw):
    dm = CTRDataModule(source, batch_size=2, cache_dir=cache_dir, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _entries(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


def test_second_run_reads_the_cache_without_parsing(tmp_path):
    root, cache_dir = _csv_dir(tmp_path), tmp_path / "cache"
    first = _CountingReader(root=root)
    dm1 = _ready(first, cache_dir)
    assert first.loads == 1 and len(_entries(cache_dir)) == 1

    second = _CountingReader(root=root)
    dm2 = _ready(second, cache_dir)
    assert second.loads == 0  # a fresh process-like run: no parse at all
    assert dm2.feature_spec == dm1.feature_spec
    for s in ("train", "val", "test"):
        for a in ("dense", "sparse", "label"):
            assert torch.equal(getattr(dm1.split(s), a), getattr(dm2.split(s), a))
    # cached arrays are memory-mapped files in the entry
    entry = cache_dir / _entries(cache_dir)[0]
    on_disk = np.load(entry / "train_sparse.npy", mmap_mode="r")
    np.testing.assert_array_equal(on_disk, dm2.split("train").sparse.numpy())


def test_setup_without_prepare_data_builds_the_entry_once(tmp_path):
    root, cache_dir = _csv_dir(tmp_path), tmp_path / "cache"
    reader = _CountingReader(root=root)
    dm = CTRDataModule(reader, cache_dir=cache_dir)
    dm.setup("fit")
    dm.setup("test")
    assert reader.loads == 1 and len(_entries(cache_dir)) == 1


def test_key_changes_with_file_content_and_options(tmp_path):
    root, cache_dir = _csv_dir(tmp_path), tmp_path / "cache"
    cache = PreprocessCache(cache_dir)
    base = cache.key(CategoricalCSVReader(root=root), "error")
    assert base == cache.key(CategoricalCSVReader(root=root), "error")
    assert base != cache.key(CategoricalCSVReader(root=root, min_count=2), "error")
    assert base != cache.key(CategoricalCSVReader(root=root), "skip")
    train = root / "train.csv"
    train.write_text(train.read_text() + "0,c,w\n")
    st = train.stat()
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert base != cache.key(CategoricalCSVReader(root=root), "error")
    # edited data is parsed again, not served from the stale entry
    reader = _CountingReader(root=root)
    dm = _ready(reader, cache_dir)
    assert reader.loads == 1 and len(dm.split("train")) == 4


def test_failed_parse_caches_nothing(tmp_path):
    root, cache_dir = _csv_dir(tmp_path, rows=("1,a,x", "7,b,y")), tmp_path / "cache"
    dm = CTRDataModule(CategoricalCSVReader(root=root), cache_dir=cache_dir)
    with pytest.raises(DataFormatError, match="line 3"):
        dm.prepare_data()
    with pytest.raises(DataFormatError, match="line 3"):
        dm.setup("fit")
    assert _entries(cache_dir) == []


def test_failed_write_leaves_no_partial_entry(tmp_path, monkeypatch):
    root, cache_dir = _csv_dir(tmp_path), tmp_path / "cache"
    real_save, calls = np.save, []

    def failing_save(path, arr):
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full")
        real_save(path, arr)

    monkeypatch.setattr(cache_module.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _ready(CategoricalCSVReader(root=root), cache_dir)
    assert _entries(cache_dir) == []  # neither the entry nor its temporary folder


def test_a_concurrent_writer_of_the_same_entry_is_harmless(tmp_path):
    root, cache = _csv_dir(tmp_path), PreprocessCache(tmp_path / "cache")
    reader = CategoricalCSVReader(root=root)
    key, data = cache.key(reader, "error"), reader.load()
    first = cache.store(key, data)
    assert cache.store(key, data) == first  # the rename loses the race: keep the entry
    assert _entries(cache.root) == [key]
    assert torch.equal(cache.load(key).splits["test"].sparse, data.splits["test"].sparse)


def test_skip_counts_survive_the_cache(tmp_path, caplog):
    root, cache_dir = _csv_dir(tmp_path, rows=("1,a,x", "1,a", "0,b,y")), tmp_path / "cache"
    dm1 = _ready(_CountingReader(root=root), cache_dir, on_bad_row="skip")
    counts = {str(root / f): 1 for f in ("train.csv", "valid.csv", "test.csv")}
    assert dm1.bad_rows == counts
    assert caplog.text.count("skipped 1 bad row(s)") == 3  # once per file, not again on setup
    assert "skipping" not in caplog.text
    caplog.clear()
    dm2 = _ready(_CountingReader(root=root), cache_dir, on_bad_row="skip")
    assert dm2.bad_rows == counts and dm2.source.loads == 0
    assert "skipping 3 bad row(s)" in caplog.text


def test_uncacheable_sources_and_disabled_cache_write_nothing(tmp_path):
    cache_dir = tmp_path / "cache"
    _ready(SyntheticCTR(n_train=100, n_val=10, n_test=10), cache_dir)
    _ready(CategoricalCSVReader(root=_csv_dir(tmp_path)), cache_dir, cache=False)
    assert _entries(cache_dir) == []


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKITECT_CACHE", str(tmp_path / "c"))
    assert PreprocessCache().root == tmp_path / "c"
    monkeypatch.delenv("RANKITECT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert PreprocessCache().root == tmp_path / ".cache" / "rankitect"
