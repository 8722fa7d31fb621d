"""Atomic checkpoint writes, ``weights_only`` loading, and arch files read as data only."""

from __future__ import annotations

import io
import json
import pickle

import hydra.utils
import pytest
import torch

from rankitect.checkpoint import AtomicCheckpointIO, resolve_resume, temp_files
from rankitect.data.synthetic import SyntheticCTR
from rankitect.lit import supernet_module
from rankitect.space import build_arch_model, load_space

REAL_SAVE = torch.save


def torn_save(obj, f, *args, **kwargs):
    """Writes half of the serialised bytes, then fails, as a full disk or a crash would."""
    buf = io.BytesIO()
    REAL_SAVE(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    raise OSError("No space left on device")


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io_plugin, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    good = {"state_dict": {"w": torch.arange(6.0)}, "global_step": 3}
    io_plugin.save_checkpoint(good, path)
    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space left"):
        io_plugin.save_checkpoint({"state_dict": {"w": torch.zeros(6)}, "global_step": 6}, path)
    monkeypatch.undo()
    loaded = io_plugin.load_checkpoint(path)
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.arange(6.0))
    assert temp_files(path) == []  # the failed attempt cleaned up after itself
    assert resolve_resume("auto", tmp_path) == str(path)


def test_a_torn_temporary_file_is_never_taken_for_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torn = path.with_name(".last.ckpt.0123abcd.tmp")  # what a SIGKILL mid-save leaves
    torn.write_bytes(b"PK\x03\x04 half a zip")
    assert resolve_resume("auto", tmp_path) is None  # no last.ckpt yet: start afresh
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, path)
    assert not torn.exists()  # removed by the next good save of the same file
    assert torch.load(path, weights_only=True) == {"global_step": 1}


def test_checkpoints_are_written_with_the_umask_permissions(tmp_path):
    path = tmp_path / "a.ckpt"
    AtomicCheckpointIO().save_checkpoint({"x": 1}, path)
    plain = tmp_path / "b"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


class Payload:
    """Not a tensor or a plain value: unpickling it would run arbitrary code paths."""


def test_loading_refuses_pickled_objects_unless_asked(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)
    loaded = AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert isinstance(loaded["payload"], Payload)


# ---- arch files are data ---------------------------------------------------------------------


@pytest.fixture
def no_instantiate(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"instantiate called on {args!r}")

    monkeypatch.setattr(hydra.utils, "instantiate", refuse)
    monkeypatch.setattr(supernet_module, "instantiate", refuse)


def arch_with(space, where: str) -> dict:
    doc = space.seed_arch().to_dict()
    if where == "top":
        doc["_target_"] = "os.system"
    else:
        doc["choices"][1]["_target_"] = "os.system"
    return doc


@pytest.mark.parametrize(
    ("where", "message"),
    [("top", r"unknown Arch field\(s\) \['_target_'\]"), ("choice", r"choice 1, field '_target_'")],
)
def test_an_arch_file_with_a_target_is_rejected_naming_file_and_field(
    tmp_path, no_instantiate, where, message
):
    spec = SyntheticCTR().spec
    space = load_space("rankitect", spec)
    path = tmp_path / "best_arch.json"
    path.write_text(json.dumps(arch_with(space, where)))
    with pytest.raises(ValueError, match=rf"arch file '{path}'.*{message}"):
        build_arch_model(spec, "rankitect", path)
    with pytest.raises(ValueError, match=rf"baseline: '{path}'.*{message}"):
        supernet_module.build_baseline(space, str(path))
    # the same file without the extra key is a valid architecture, built without instantiate
    path.write_text(space.seed_arch().to_json())
    assert build_arch_model(spec, "rankitect", path).flops() == space.flops(space.seed_arch())
    assert supernet_module.build_baseline(space, str(path)) is not None
