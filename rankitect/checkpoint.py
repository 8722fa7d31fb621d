"""Crash-safe checkpoints: atomic writes, safe loading, and ``resume=auto``.

Every Trainer that `rankitect-train` and `rankitect-search` build gets an `AtomicCheckpointIO`
plugin. It streams ``torch.save`` into a hidden temporary file beside the target, fsyncs it and
renames it over the target, then fsyncs the directory, so a process killed at any point of a
save leaves the previous checkpoint (``last.ckpt`` included: ``ModelCheckpoint(save_last=True)``
writes it as a full copy through this plugin) intact. A temporary file left by a kill is named
``.<name>.<random>.tmp``: not a ``*.ckpt`` file, so neither Lightning nor `resolve_resume` ever
takes it for a checkpoint, and the next successful save of the same target removes it.
Loading defaults to ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


def _fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry is data too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files an interrupted save of ``path`` may have left beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` such that ``path`` is either the old file or the new one.

    The temporary file is created with ``O_EXCL`` and mode ``0o666`` (so the umask applies, as
    for a plain ``open``), written, flushed and fsynced; ``os.replace`` then swaps it in.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    # Left by an earlier process killed mid-save of the same target; never read, only large.
    for stale in temp_files(path):
        stale.unlink(missing_ok=True)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO` with crash-safe local writes and safe loads.

    Local paths are written by `atomic_torch_save`; remote ones (``s3://`` ...) go through
    Lightning's own transactional upload. ``load_checkpoint`` uses ``weights_only=True`` unless
    the caller asks otherwise: Rankitect's checkpoints hold only tensors and plain data.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        safe = True if weights_only is None else weights_only
        return super().load_checkpoint(path, map_location=map_location, weights_only=safe)


def resolve_resume(resume: str | os.PathLike | None, output_dir: str | Path) -> str | None:
    """The checkpoint the config key ``resume`` names, for ``Trainer.fit(ckpt_path=...)``.

    ``null``: start afresh; ``auto``: ``<output_dir>/checkpoints/last.ckpt`` if it exists (else
    start afresh), i.e. rerun with ``hydra.run.dir=<the killed run's dir> resume=auto``; any
    other value: that checkpoint file, which must exist.
    """
    if resume is None:
        return None
    if str(resume) == "auto":
        last = Path(output_dir) / CHECKPOINT_DIR / LAST
        if last.is_file():
            log.info("resume=auto: resuming from %s", last)
            return str(last)
        log.info("resume=auto: no %s yet; starting afresh", last)
        return None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(
            f"resume: checkpoint {str(resume)!r} does not exist (give a .ckpt file, 'auto' for "
            f"<run dir>/{CHECKPOINT_DIR}/{LAST}, or null)"
        )
    return str(path)
