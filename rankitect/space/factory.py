"""Hydra-instantiable factory of a materialised architecture (``model=arch``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankitect.data.spec import FeatureSpec
from rankitect.space.spaces import load_space
from rankitect.space.subnet import SubnetModel, materialize


def build_arch_model(
    spec: FeatureSpec | Mapping[str, Any], space: str | Mapping[str, Any], arch_file: str | Path
) -> SubnetModel:
    """Load ``space`` (shipped name, YAML path or config mapping) for ``spec``, read and
    validate the Arch JSON in ``arch_file``, and return its freshly initialised model."""
    search_space = load_space(space, spec)
    try:
        text = Path(arch_file).read_text()
    except OSError as err:
        raise ValueError(f"arch file {str(arch_file)!r}: cannot be read: {err}") from None
    try:
        arch = search_space.arch_from_json(text)
    except ValueError as err:
        raise ValueError(
            f"arch file {str(arch_file)!r} is not an architecture of space "
            f"{search_space.name!r}: {err}"
        ) from None
    return materialize(search_space, arch)
