"""Hydra-instantiable factory of a materialised architecture (``model=arch``) and the
supernet of any space (`build_supernet`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from rankitect.data.spec import FeatureSpec
from rankitect.space.space import SearchSpace
from rankitect.space.spaces import load_space
from rankitect.space.subnet import SubnetModel, materialize
from rankitect.space.supernet import Supernet


def build_supernet(space: Any) -> nn.Module:
    """The weight-sharing supernet of ``space``: a `Supernet` for a Choice `SearchSpace`,
    else the space's own (``space.build_supernet()``, e.g. the DHEN space's `DHENSupernet`)."""
    if isinstance(space, SearchSpace):
        return Supernet(space)
    return space.build_supernet()


def build_arch_model(
    spec: FeatureSpec | Mapping[str, Any],
    space: str | Mapping[str, Any],
    arch_file: str | Path,
    dropout: float | None = None,
) -> SubnetModel:
    """Load ``space`` (shipped name, YAML path or config mapping) for ``spec``, read and
    validate the Arch JSON in ``arch_file``, and return its freshly initialised model, trained
    under the space's `LayerSettings` (``dropout``, when given, overrides the space's)."""
    search_space = load_space(space, spec)
    try:
        text = Path(arch_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"arch file {str(arch_file)!r}: cannot be read: {err}") from None
    try:
        arch = search_space.arch_from_json(text)
    except ValueError as err:
        raise ValueError(
            f"arch file {str(arch_file)!r} is not an architecture of space "
            f"{search_space.name!r} (model.space must be the space it was searched in, the "
            f"'space' of its search's results.json): {err}"
        ) from None
    return materialize(search_space, arch, dropout=dropout)
