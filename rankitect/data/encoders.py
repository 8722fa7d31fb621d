"""Turning categorical keys (uint64, 0 = empty; see `rankitect.data.delimited`) into ids."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rankitect.data.delimited import mix64


def hash_ids(keys: np.ndarray, buckets: int) -> np.ndarray:
    """int64 ids ``(n, k)``: 0 for an empty field, else ``1 + mix64(key) % buckets``, so any
    value, seen in training or not, lands in one of ``buckets`` ids (cardinality buckets + 1)."""
    if buckets < 1:
        raise ValueError(f"hash buckets must be >= 1, got {buckets}")
    ids = (mix64(keys) % np.uint64(buckets)).astype(np.int64) + 1
    ids[keys == 0] = 0
    return ids


class Vocabulary:
    """Per-field vocabularies fit on the train split's keys ``(n, k)``.

    Values seen at least ``min_count`` times in training get their own id; the rest, and values
    never seen in training, share the out-of-vocabulary (OOV) id. Id layout per field:

    * ``reserve_missing=False``: 0 = OOV, 1.. = vocabulary (an empty field is an ordinary value);
    * ``reserve_missing=True``: 0 = empty field (always, whatever its count), 1 = OOV, 2.. =
      vocabulary.

    Vocabulary ids follow the keys' sorted order: arbitrary, but the same on every run.
    """

    def __init__(self, train_keys: np.ndarray, min_count: int = 1, reserve_missing: bool = False):
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        self.offset = 2 if reserve_missing else 1
        self.reserve_missing = reserve_missing
        self.vocabs: list[pd.Index] = []
        for j in range(train_keys.shape[1]):
            codes, uniques = pd.factorize(train_keys[:, j])
            keep = np.bincount(codes, minlength=len(uniques)) >= min_count
            if reserve_missing:
                keep &= uniques != 0
            self.vocabs.append(pd.Index(np.sort(uniques[keep])))

    @property
    def cardinalities(self) -> tuple[int, ...]:
        return tuple(len(v) + self.offset for v in self.vocabs)

    def encode(self, keys: np.ndarray) -> np.ndarray:
        """int64 ids ``(n, k)`` of ``keys`` ``(n, k)``."""
        if keys.shape[1] != len(self.vocabs):
            raise ValueError(f"expected {len(self.vocabs)} fields, got {keys.shape[1]}")
        ids = np.empty(keys.shape, np.int64)
        for j, vocab in enumerate(self.vocabs):
            pos = vocab.get_indexer(keys[:, j])
            ids[:, j] = np.where(pos >= 0, pos + self.offset, self.offset - 1)
        if self.reserve_missing:
            ids[keys == 0] = 0
        return ids
