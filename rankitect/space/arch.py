"""`Arch`: one architecture of a search space, as plain immutable data with a JSON round-trip.

Inputs are indexed globally: ``0`` = raw dense vector ``(B, n_dense)``, ``1`` = raw sparse
embeddings ``(B, n_sparse, D)``, ``2 + i`` = output of Choice ``i``. A Choice reads earlier
inputs only, so every `Arch` is a DAG; the last Choice feeds the classifier.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rankitect.space.blocks import BLOCKS, CONNECTION_BLOCKS, DIM_BLOCKS, PAIRWISE_BLOCKS

DENSE = 0
SPARSE = 1
FIRST_CHOICE = 2


def choice_input(i: int) -> int:
    """Global input index of Choice ``i``'s output."""
    return FIRST_CHOICE + i


def input_name(k: int) -> str:
    """Readable name of global input ``k``: ``dense``, ``sparse`` or ``choice<i>``."""
    if k == DENSE:
        return "dense"
    if k == SPARSE:
        return "sparse"
    return f"choice{k - FIRST_CHOICE}"


def arch_error(choice: int, field_name: str, reason: str) -> ValueError:
    """The one error format for invalid architectures: it names the Choice and the field."""
    return ValueError(f"choice {choice}, field '{field_name}': {reason}")


@dataclass(frozen=True)
class ChoiceArch:
    """What one Choice computes.

    ``inputs``: sorted global input indices read by a connection block (linear, embed_fc,
    dot_product, dot); ``left``/``right``: the pair read by a pairwise block; ``dim``: the
    searched output dimension of a connection block (linear width, or rows M of EmbedFC / dot
    product; the parameter-free dot has none).
    """

    block: str
    inputs: tuple[int, ...] = ()
    left: int | None = None
    right: int | None = None
    dim: int | None = None

    @property
    def sources(self) -> tuple[int, ...]:
        """Distinct inputs read, ascending."""
        if self.block in PAIRWISE_BLOCKS:
            return tuple(sorted({self.left, self.right}))
        return self.inputs

    def check(self, index: int) -> None:
        """Structural checks that need no search space (the Choice's own index only)."""
        if self.block not in BLOCKS:
            raise arch_error(index, "block", f"unknown block {self.block!r}; known: {BLOCKS}")
        limit = choice_input(index)
        if self.block in CONNECTION_BLOCKS:
            if self.left is not None or self.right is not None:
                raise arch_error(index, "left", f"{self.block} takes 'inputs', not left/right")
            if not self.inputs:
                raise arch_error(index, "inputs", "a Choice needs at least one input")
            if len(set(self.inputs)) != len(self.inputs):
                raise arch_error(index, "inputs", f"duplicate input in {list(self.inputs)}")
            for k in self.inputs:
                _check_source(index, "inputs", k, limit)
            if self.block not in DIM_BLOCKS:
                if self.dim is not None:
                    raise arch_error(
                        index, "dim", f"{self.block} has no searched dim, got {self.dim!r}"
                    )
            elif not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
                raise arch_error(
                    index, "dim", f"{self.block} needs a positive int dim, got {self.dim!r}"
                )
        else:
            if self.inputs:
                raise arch_error(index, "inputs", f"{self.block} takes 'left'/'right', not inputs")
            if self.dim is not None:
                raise arch_error(
                    index, "dim", f"{self.block} has no searched dim, got {self.dim!r}"
                )
            _check_source(index, "left", self.left, limit)
            _check_source(index, "right", self.right, limit)

    def to_dict(self) -> dict[str, Any]:
        if self.block in PAIRWISE_BLOCKS:
            return {"block": self.block, "left": self.left, "right": self.right}
        if self.block not in DIM_BLOCKS:
            return {"block": self.block, "inputs": list(self.inputs)}
        return {"block": self.block, "inputs": list(self.inputs), "dim": self.dim}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], index: int) -> ChoiceArch:
        if not isinstance(d, Mapping):
            raise arch_error(index, "block", f"expected an object, got {type(d).__name__}")
        unknown = set(d) - {"block", "inputs", "left", "right", "dim"}
        if unknown:
            raise arch_error(index, sorted(unknown)[0], "unknown field")
        if "block" not in d:
            raise arch_error(index, "block", "missing")
        inputs = d.get("inputs", ())
        if not isinstance(inputs, list | tuple):
            raise arch_error(index, "inputs", f"expected a list, got {inputs!r}")
        return cls(
            block=d["block"],
            inputs=tuple(inputs),
            left=d.get("left"),
            right=d.get("right"),
            dim=d.get("dim"),
        )


def _check_source(index: int, field_name: str, k: Any, limit: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise arch_error(index, field_name, f"input {k!r} is not a non-negative int")
    if k >= limit:
        raise arch_error(
            index, field_name, f"input {k} ({input_name(k)}) is not earlier than this Choice"
        )


@dataclass(frozen=True)
class Arch:
    """An architecture: one `ChoiceArch` per Choice, in order.

    Construction sorts each connection block's inputs and checks the structure (known blocks,
    inputs from earlier Choices only, at least one input, positive dims). Checks against a
    search space (allowed blocks, candidate inputs, dimension options, number of Choices) are
    `SearchSpace.validate`'s; `from_json(text, space)` runs both.
    """

    choices: tuple[ChoiceArch, ...] = field(default=())

    def __post_init__(self) -> None:
        normalised = []
        for i, ch in enumerate(self.choices):
            if not isinstance(ch, ChoiceArch):
                raise arch_error(i, "block", f"expected a ChoiceArch, got {type(ch).__name__}")
            if ch.block in CONNECTION_BLOCKS:
                try:
                    ch = ChoiceArch(ch.block, tuple(sorted(ch.inputs)), None, None, ch.dim)
                except TypeError as err:
                    raise arch_error(i, "inputs", f"inputs must be ints: {err}") from None
            ch.check(i)
            normalised.append(ch)
        if not normalised:
            raise ValueError("an Arch needs at least one Choice")
        object.__setattr__(self, "choices", tuple(normalised))

    def reachable(self) -> tuple[int, ...]:
        """Choices whose output reaches the classifier (through the last Choice), ascending."""
        seen = {len(self.choices) - 1}
        for i in range(len(self.choices) - 1, -1, -1):
            if i in seen:
                seen.update(k - FIRST_CHOICE for k in self.choices[i].sources if k >= FIRST_CHOICE)
        return tuple(sorted(seen))

    def inputs_read(self) -> frozenset[int]:
        """Global inputs read by the reachable Choices (e.g. whether the embeddings are used)."""
        return frozenset(k for c in self.reachable() for k in self.choices[c].sources)

    def to_dict(self) -> dict[str, Any]:
        return {"choices": [ch.to_dict() for ch in self.choices]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        if isinstance(d, Mapping) and {"layers", "head"} <= set(d):
            raise ValueError(
                "an Arch document is an object with a 'choices' list; this one has 'layers' "
                "and 'head', a DHEN space's architecture: read it with that space "
                "(load_space('dhen2', spec).arch_from_json(text); rankitect-train model=arch "
                "model.space=<the DHEN space it was searched in>)"
            )
        if not isinstance(d, Mapping) or not isinstance(d.get("choices"), list):
            raise ValueError("an Arch document is an object with a 'choices' list")
        unknown = set(d) - {"choices"}
        if unknown:
            raise ValueError(f"unknown Arch field(s) {sorted(unknown)}")
        return cls(tuple(ChoiceArch.from_dict(c, i) for i, c in enumerate(d["choices"])))

    @classmethod
    def from_json(cls, text: str, space: Any = None) -> Arch:
        """Parse an Arch; with ``space`` (a `SearchSpace`) also validate it against the space."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON: {err}") from None
        except RecursionError:
            raise ValueError("not valid JSON: nested too deeply") from None
        arch = cls.from_dict(doc)
        if space is not None:
            space.validate(arch)
        return arch
