"""Where the console scripts find their Hydra configs."""

from __future__ import annotations

from pathlib import Path

import rankitect


def conf_dir() -> Path:
    """The shipped ``conf/`` directory.

    An installed wheel carries it as ``rankitect/conf``; a source checkout (editable install)
    has it at the repository's top level.
    """
    package = Path(rankitect.__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"Rankitect's config directory was not found next to {package}: "
        "reinstall the package (pip install .) or run from a source checkout"
    )
