"""File readers: categorical-id CSV (BARS layout, e.g. Frappe_x1) and Criteo (TSV or CSV)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rankitect.data.delimited import (
    CATEGORICAL,
    LABEL,
    NUMERIC,
    Table,
    read_first_line,
    read_table,
    read_table_parts,
)
from rankitect.data.encoders import Vocabulary, hash_ids
from rankitect.data.errors import DataFileNotFoundError, DataFormatError
from rankitect.data.source import SPLITS, CTRData, CTRSplit, OnBadRow, check_on_bad_row
from rankitect.data.spec import FeatureSpec


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a file's content for the cache: absolute path, size and mtime."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataFileNotFoundError(path, "file not found") from None
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _detect_sep(path: Path) -> str:
    """Tab or comma, whichever is more frequent in the first 64 KiB: one damaged (e.g.
    truncated) first line must not decide the separator of the whole file."""
    with open(path, "rb") as f:
        sample = f.read(1 << 16)
    return "\t" if sample.count(b"\t") > sample.count(b",") else ","


def _resolve(root: str | Path | None, name: str | Path) -> Path:
    name = Path(name).expanduser()
    return name if root is None or name.is_absolute() else Path(root).expanduser() / name


class CategoricalCSVReader:
    """CSV files with a header, a 0/1 label column and categorical id columns (BARS layout).

    Args:
        root: folder of the split files (relative file names are taken inside it).
        train, val, test: the split files (Frappe_x1: ``train.csv``, ``valid.csv``,
            ``test.csv``).
        label: name of the label column; every other column is a categorical field, named by
            the header.
        sep: field separator; ``\\t`` (a backslash and a t, as a tab is typed in a command-line
            override: ``'data.source.sep=\\t'``) means a tab.
        min_count: values seen fewer times in the train split go to the OOV id.

    Ids are remapped per field from the train split's vocabulary (`Vocabulary`): 0 is the
    out-of-vocabulary id for values unseen in training, 1.. the train values. There are no dense
    features. ``bad_rows`` holds the rows skipped per file after `load` (``on_bad_row="skip"``).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        train: str | Path = "train.csv",
        val: str | Path = "valid.csv",
        test: str | Path = "test.csv",
        label: str = "label",
        sep: str = ",",
        min_count: int = 1,
    ) -> None:
        self.files = {s: _resolve(root, f) for s, f in zip(SPLITS, (train, val, test), strict=True)}
        # Hydra strips a real tab from an override's value, so a command line cannot pass one.
        self.label, self.sep, self.min_count = label, "\t" if sep == "\\t" else sep, int(min_count)
        self.bad_rows: dict[str, int] = {}

    def fingerprint(self) -> dict[str, Any]:
        return {
            "files": {s: file_fingerprint(p) for s, p in self.files.items()},
            "label": self.label,
            "sep": self.sep,
            "min_count": self.min_count,
        }

    def load(self, on_bad_row: OnBadRow = "error") -> CTRData:
        check_on_bad_row(on_bad_row)
        header = read_first_line(self.files["train"]).split(self.sep)
        if self.label not in header:
            raise DataFormatError(
                self.files["train"], f"header {header} has no label column {self.label!r}", 1
            )
        kinds = [LABEL if name == self.label else CATEGORICAL for name in header]
        tables = {}
        for split, path in self.files.items():
            if (h := read_first_line(path).split(self.sep)) != header:
                raise DataFormatError(path, f"header {h} differs from the train file's {header}", 1)
            tables[split] = read_table(path, kinds, header, self.sep, True, on_bad_row)
        vocab = Vocabulary(tables["train"].keys, self.min_count)
        splits = {
            s: CTRSplit.from_numpy(np.zeros((len(t), 0), np.float32), vocab.encode(t.keys), t.label)
            for s, t in tables.items()
        }
        self.bad_rows = {str(self.files[s]): t.bad_rows for s, t in tables.items()}
        spec = FeatureSpec(
            n_dense=0,
            sparse_cardinalities=vocab.cardinalities,
            sparse_names=tuple(n for n in header if n != self.label),
        )
        return CTRData(spec=spec, splits=splits, bad_rows=dict(self.bad_rows))


def criteo_layout(
    path: Path, sep: str | None = None, header: bool | None = None
) -> tuple[str, bool, list[str]]:
    """Separator, header flag and column names of a Criteo file (``None``: detect them).

    A header names the label and integer columns; a data row has numbers among them (or empty
    fields), even when one of them is damaged, e.g. a junk label.
    """
    first = read_first_line(path)
    sep = sep or _detect_sep(path)
    n_dense, n_fields = CriteoReader.N_DENSE, 1 + CriteoReader.N_DENSE + CriteoReader.N_SPARSE
    if header is None:
        header = all(f and not _is_number(f) for f in first.split(sep)[: 1 + n_dense])
    names = ["label"] + [f"I{i + 1}" for i in range(n_dense)]
    names += [f"C{i + 1}" for i in range(CriteoReader.N_SPARSE)]
    if header:
        names = first.split(sep)
        if len(names) != n_fields:
            raise DataFormatError(
                path, f"expected a header of {n_fields} fields, found {len(names)}", 1
            )
    return sep, header, names


class CriteoReader:
    """Criteo display-ads data: a 0/1 label, 13 integer features, 26 categorical features.

    Reads the original tab-separated files without a header (Kaggle / Terabyte) and the CSV
    variant with a header ``label,I1..I13,C1..C26``; ``sep`` and ``header`` are detected from
    the first line unless given.

    Args:
        path: one file, split at random into train / val / test by ``split`` fractions with
            ``split_seed``; or else give all of ``train``, ``val``, ``test``.
        encoding: ``"hash"``: each categorical value maps to ``1 + hash % hash_buckets`` (values
            unseen in training hash like any other); ``"frequency"``: values seen at least
            ``min_count`` times in the train split get their own id, rarer and unseen ones share
            the out-of-vocabulary id 1. Either way an empty field has its own id 0.
        dense_fill: value of a dense feature whose field is empty, in the transformed space.
        log1p: integer features become ``log(1 + max(x, 0))`` (negatives clipped to 0 first);
            without it, only the clipping.
    """

    N_DENSE, N_SPARSE = 13, 26

    def __init__(
        self,
        path: str | Path | None = None,
        train: str | Path | None = None,
        val: str | Path | None = None,
        test: str | Path | None = None,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        sep: str | None = None,
        header: bool | None = None,
        encoding: str = "frequency",
        hash_buckets: int = 1_000_000,
        min_count: int = 10,
        dense_fill: float = 0.0,
        log1p: bool = True,
    ) -> None:
        split_files = (train, val, test)
        given = [f is not None for f in split_files]
        if not ((path is not None and not any(given)) or (path is None and all(given))):
            raise ValueError("CriteoReader needs either `path` or all of `train`, `val`, `test`")
        if path is not None:
            self.files = {"all": Path(path).expanduser()}
        else:
            self.files = {s: Path(f).expanduser() for s, f in zip(SPLITS, split_files, strict=True)}
        self.split = tuple(float(f) for f in split)
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1.0) > 1e-6:
            raise ValueError(f"split must be 3 fractions >= 0 summing to 1, got {self.split}")
        if encoding not in ("hash", "frequency"):
            raise ValueError(f"encoding must be 'hash' or 'frequency', got {encoding!r}")
        if hash_buckets < 1 or min_count < 1:
            raise ValueError("hash_buckets and min_count must be >= 1")
        self.split_seed, self.sep, self.header = int(split_seed), sep, header
        self.encoding = encoding
        self.hash_buckets, self.min_count = int(hash_buckets), int(min_count)
        self.dense_fill, self.log1p = float(dense_fill), bool(log1p)
        self.bad_rows: dict[str, int] = {}

    def fingerprint(self) -> dict[str, Any]:
        options = {k: v for k, v in vars(self).items() if k not in ("files", "bad_rows")}
        if "all" not in self.files:
            options.pop("split")
            options.pop("split_seed")
        return {"files": {s: file_fingerprint(p) for s, p in self.files.items()}, **options}

    def load(self, on_bad_row: OnBadRow = "error") -> CTRData:
        check_on_bad_row(on_bad_row)
        if "all" in self.files:
            path = self.files["all"]
            names, parts = self._read(path, on_bad_row, lambda n: self._assign_splits(path, n))
            tables = dict(zip(SPLITS, parts, strict=True))
            self.bad_rows = {str(path): parts[0].bad_rows}
        else:
            read = {s: self._read(p, on_bad_row, None) for s, p in self.files.items()}
            names = read["train"][0]
            tables = {s: parts[0] for s, (_, parts) in read.items()}
            self.bad_rows = {str(self.files[s]): t.bad_rows for s, t in tables.items()}
        if self.encoding == "hash":
            cards = (self.hash_buckets + 1,) * self.N_SPARSE  # hashed while parsing
        else:
            vocab = Vocabulary(tables["train"].keys, self.min_count, reserve_missing=True)
            tables = {s: replace(t, keys=vocab.encode(t.keys)) for s, t in tables.items()}
            cards = vocab.cardinalities
        splits = {s: CTRSplit.from_numpy(t.numeric, t.keys, t.label) for s, t in tables.items()}
        spec = FeatureSpec(
            n_dense=self.N_DENSE,
            sparse_cardinalities=cards,
            dense_names=tuple(names[1 : 1 + self.N_DENSE]),
            sparse_names=tuple(names[1 + self.N_DENSE :]),
        )
        return CTRData(spec=spec, splits=splits, bad_rows=dict(self.bad_rows))

    def _read(
        self, path: Path, on_bad_row: OnBadRow, partition: Callable[[int], np.ndarray] | None
    ) -> tuple[list[str], list[Table]]:
        sep, header, names = criteo_layout(path, self.sep, self.header)
        kinds = [LABEL] + [NUMERIC] * self.N_DENSE + [CATEGORICAL] * self.N_SPARSE
        hashing = functools.partial(hash_ids, buckets=self.hash_buckets)
        return names, read_table_parts(
            path,
            kinds,
            names,
            sep,
            header,
            on_bad_row,
            numeric_fn=self._dense,
            keys_fn=hashing if self.encoding == "hash" else None,
            partition=partition,
        )

    def _assign_splits(self, path: Path, n: int) -> np.ndarray:
        """Split index (0 train, 1 val, 2 test) of each of ``n`` rows: exactly
        ``int(n * fraction)`` rows for train and val, the rest for test, chosen by a seeded
        permutation."""
        n_train, n_val = int(n * self.split[0]), int(n * self.split[1])
        sizes = {"train": n_train, "val": n_val, "test": n - n_train - n_val}
        if empty := [s for s, k in sizes.items() if k == 0]:
            raise DataFormatError(path, f"split {self.split} of {n} rows leaves {empty} empty")
        which = np.empty(n, np.int8)
        which[np.random.default_rng(self.split_seed).permutation(n)] = np.repeat(
            np.arange(3, dtype=np.int8), list(sizes.values())
        )
        return which

    def _dense(self, numeric: np.ndarray) -> np.ndarray:
        x = np.maximum(numeric, 0.0)  # NaN (empty) stays NaN
        if self.log1p:
            x = np.log1p(x)
        x[np.isnan(x)] = self.dense_fill
        return x.astype(np.float32)
