"""`FeatureSpec`: the shape of a CTR data set's inputs, shared by data, models and spaces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FeatureSpec:
    """Dense and sparse inputs of a CTR data set.

    A batch is ``(dense, sparse, label)``: ``dense`` float ``(B, n_dense)``, ``sparse`` int64
    ``(B, n_sparse)`` holding per-field ids in ``0..cardinality-1``, ``label`` float ``(B,)``.
    """

    n_dense: int
    sparse_cardinalities: tuple[int, ...]
    sparse_names: tuple[str, ...] = field(default=())
    dense_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        cards = tuple(int(c) for c in self.sparse_cardinalities)
        object.__setattr__(self, "sparse_cardinalities", cards)
        if self.n_dense < 0:
            raise ValueError(f"FeatureSpec.n_dense must be >= 0, got {self.n_dense}")
        if self.n_dense == 0 and not cards:
            raise ValueError("FeatureSpec needs at least one dense or sparse feature")
        bad = [i for i, c in enumerate(cards) if c < 1]
        if bad:
            raise ValueError(
                f"FeatureSpec.sparse_cardinalities[{bad[0]}] must be >= 1, got {cards[bad[0]]}"
            )
        names = tuple(self.sparse_names) or tuple(f"C{i + 1}" for i in range(len(cards)))
        dnames = tuple(self.dense_names) or tuple(f"I{i + 1}" for i in range(self.n_dense))
        if len(names) != len(cards):
            raise ValueError(
                f"FeatureSpec.sparse_names has {len(names)} names for {len(cards)} sparse fields"
            )
        if len(dnames) != self.n_dense:
            raise ValueError(
                f"FeatureSpec.dense_names has {len(dnames)} names for {self.n_dense} dense features"
            )
        object.__setattr__(self, "sparse_names", names)
        object.__setattr__(self, "dense_names", dnames)

    @property
    def n_sparse(self) -> int:
        return len(self.sparse_cardinalities)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_dense": self.n_dense,
            "sparse_cardinalities": list(self.sparse_cardinalities),
            "sparse_names": list(self.sparse_names),
            "dense_names": list(self.dense_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            n_dense=int(d["n_dense"]),
            sparse_cardinalities=tuple(d["sparse_cardinalities"]),
            sparse_names=tuple(d.get("sparse_names", ())),
            dense_names=tuple(d.get("dense_names", ())),
        )
