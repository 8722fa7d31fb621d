"""What every data source hands the data module: split tensors plus the feature spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from rankitect.data.spec import FeatureSpec

SPLITS = ("train", "val", "test")
OnBadRow = Literal["error", "skip"]


def check_on_bad_row(on_bad_row: str) -> None:
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")


@dataclass
class CTRSplit:
    """One split as contiguous tensors: ``dense`` float32 ``(N, n_dense)``, ``sparse`` int64
    ``(N, n_sparse)``, ``label`` float32 ``(N,)``; ``prob`` float64 ``(N,)`` is the true click
    probability of each row where the source knows it (synthetic data), else ``None``."""

    dense: torch.Tensor
    sparse: torch.Tensor
    label: torch.Tensor
    prob: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.label.shape[0]
        if self.dense.dtype != torch.float32 or self.dense.ndim != 2 or self.dense.shape[0] != n:
            raise ValueError(f"dense must be float32 (N, n_dense) with N={n}")
        if self.sparse.dtype != torch.int64 or self.sparse.ndim != 2 or self.sparse.shape[0] != n:
            raise ValueError(f"sparse must be int64 (N, n_sparse) with N={n}")
        if self.label.dtype != torch.float32 or self.label.ndim != 1:
            raise ValueError("label must be float32 (N,)")
        if self.prob is not None and self.prob.shape != (n,):
            raise ValueError(f"prob must have shape ({n},)")

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @classmethod
    def from_numpy(
        cls,
        dense: np.ndarray,
        sparse: np.ndarray,
        label: np.ndarray,
        prob: np.ndarray | None = None,
    ) -> CTRSplit:
        """Wraps arrays without copying when they already have the right dtype and layout."""
        return cls(
            dense=torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)),
            sparse=torch.from_numpy(np.ascontiguousarray(sparse, dtype=np.int64)),
            label=torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)),
            prob=None if prob is None else torch.from_numpy(np.ascontiguousarray(prob)),
        )


@dataclass
class CTRData:
    """A loaded data set: the ``train``/``val``/``test`` splits, their spec, and how many bad
    rows were skipped per source file (empty unless ``on_bad_row="skip"`` dropped some)."""

    spec: FeatureSpec
    splits: dict[str, CTRSplit]
    bad_rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.splits) != set(SPLITS):
            raise ValueError(f"CTRData needs splits {SPLITS}, got {tuple(self.splits)}")
        for name, s in self.splits.items():
            if s.dense.shape[1] != self.spec.n_dense or s.sparse.shape[1] != self.spec.n_sparse:
                raise ValueError(f"split {name!r} does not match {self.spec}")


@runtime_checkable
class CTRSource(Protocol):
    """A reader or generator that `CTRDataModule` can load.

    ``fingerprint()`` returns JSON-able data identifying the source's inputs and options (file
    paths, sizes, mtimes, encoding options) for the preprocessing cache, or ``None`` when the
    source is cheap to rebuild and must not be cached.
    """

    def fingerprint(self) -> dict[str, Any] | None: ...

    def load(self, on_bad_row: OnBadRow = "error") -> CTRData: ...
