"""Preprocessing cache: a parsed data set as memory-mapped ``.npy`` files.

An entry is a folder ``<root>/<SourceClass>-<digest>/`` where the digest hashes the source's
`fingerprint()` (its files' paths, sizes and mtimes and its options), the ``on_bad_row`` policy
and `CACHE_FORMAT`, so editing a file or an option gives a new entry. An entry is written into
a temporary folder and renamed into place in one step, so readers never see half an entry and
nothing is cached when parsing fails. Stale entries are never deleted automatically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rankitect.data.source import SPLITS, CTRData, CTRSource, CTRSplit, OnBadRow
from rankitect.data.spec import FeatureSpec

CACHE_FORMAT = 1  # bump when parsing or the entry layout changes, to invalidate old entries
_ARRAYS = ("dense", "sparse", "label", "prob")


def default_cache_dir() -> Path:
    """``$RANKITECT_CACHE``, else ``~/.cache/rankitect``."""
    return Path(os.environ.get("RANKITECT_CACHE", "~/.cache/rankitect")).expanduser()


class PreprocessCache:
    """Stores and loads `CTRData` under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = default_cache_dir() if root is None else Path(root).expanduser()

    def key(self, source: CTRSource, on_bad_row: OnBadRow) -> str | None:
        """The entry name for ``source``, or ``None`` if the source is not cacheable."""
        fingerprint = source.fingerprint()
        if fingerprint is None:
            return None
        cls = type(source)
        payload = {
            "format": CACHE_FORMAT,
            "source": f"{cls.__module__}.{cls.__qualname__}",
            "fingerprint": fingerprint,
            "on_bad_row": on_bad_row,
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return f"{cls.__name__}-{hashlib.sha256(blob).hexdigest()[:24]}"

    def entry(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.entry(key) / "meta.json").is_file()

    def load(self, key: str) -> CTRData | None:
        """The cached data, memory-mapped (copy-on-write), or ``None`` on a miss."""
        if not self.has(key):
            return None
        folder = self.entry(key)
        meta = json.loads((folder / "meta.json").read_text())
        splits = {}
        for s in SPLITS:
            # copy-on-write maps: writable (as torch wants) while the files stay untouched
            arrays = {
                a: np.load(folder / f"{s}_{a}.npy", mmap_mode="c")
                for a in _ARRAYS
                if (folder / f"{s}_{a}.npy").is_file()
            }
            splits[s] = CTRSplit.from_numpy(**arrays)
        return CTRData(
            spec=FeatureSpec.from_dict(meta["spec"]), splits=splits, bad_rows=meta["bad_rows"]
        )

    def store(self, key: str, data: CTRData, info: dict[str, Any] | None = None) -> Path:
        """Writes ``data`` atomically; if another process stored the same key first, keeps
        theirs. ``info`` is saved in ``meta.json`` for humans (e.g. the fingerprint)."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.entry(key)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
        try:
            for s, split in data.splits.items():
                for a in _ARRAYS:
                    t = getattr(split, a)
                    if t is not None:
                        np.save(tmp / f"{s}_{a}.npy", t.numpy())
            meta = {"spec": data.spec.to_dict(), "bad_rows": data.bad_rows, "info": info or {}}
            # meta.json marks a complete entry, so it is written last.
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            try:
                os.replace(tmp, final)
            except OSError:
                if not self.has(key):
                    raise
                # else a concurrent writer won the race with the same content: use theirs
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
        return final
