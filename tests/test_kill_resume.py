"""Kill and resume: a search SIGKILLed in the middle of a checkpoint save, then resumed with
``resume=auto`` in another process (this one), ends with the uninterrupted run's architecture.

The killed process runs ``rankitect-search`` with ``torch.save`` wrapped: at the chosen save
(drawn from a seeded RNG) it writes half of the checkpoint's bytes, then SIGKILLs itself, as a
power cut or an OOM kill in the middle of a save would. Checkpoints come every 3 steps, so the
surviving ``last.ckpt`` is a mid-epoch one and the resumed run must continue the interrupted
epoch's batch order exactly (`CTRDataModule`'s training loader is torchdata's
`StatefulDataLoader` over the resumable `BatchIndexSampler`).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from rankitect.checkpoint import temp_files
from rankitect.cli.config import conf_dir
from rankitect.data.datamodule import CTRDataModule, ResumableLoader, SplitBatches
from rankitect.data.synthetic import SyntheticCTR
from rankitect.search.run import search

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import io, os, signal, sys
import torch

kill_at = int(os.environ["KILL_AT_SAVE"])
real_save = torch.save
saves = 0


def dying_save(obj, f, *args, **kwargs):
    global saves
    saves += 1
    if saves == kill_at:
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.save = dying_save
sys.argv = ["rankitect-search", *sys.argv[1:]]
from rankitect.cli.search import main

main()
"""

COMMON = [
    "final=none",
    "search_space=generic",
    "logger=none",
    "data.source.n_val=128",
    "data.source.n_test=64",
    "data.batch_size=64",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "checkpoint_every_n_steps=3",
    "method.target_flops=3000",
]
RL = [
    *COMMON,
    "method=oneshot_rl",
    "method.baseline=lr",
    "method.samples_per_update=4",
    "method.warmup_steps=4",
    "data.source.n_train=1024",  # 16 steps per epoch
    "trainer.max_epochs=2",
]
DNAS = [
    *COMMON,
    "method=dnas",
    "data.source.n_train=512",  # 8 steps per epoch
    "trainer.max_steps=15",
    "trainer.val_check_interval=5",
    "method.curve_every_n_steps=2",
]


def run_killed(overrides: list[str], kill_at: int) -> subprocess.CompletedProcess:
    """``rankitect-search`` in a child process that SIGKILLs itself mid-save."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT_SAVE": str(kill_at)}
    cmd = [sys.executable, "-c", DRIVER, *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def run_search(overrides: list[str], out: Path) -> dict:
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=overrides)
    search(cfg, out)
    return json.loads((out / "results.json").read_text())


def kill_and_resume(tmp_path: Path, overrides: list[str], saves: int, seed: int, caplog) -> None:
    # killed in the middle of the kill_at-th checkpoint save, at a seeded random step
    kill_at = random.Random(seed).randint(2, saves)
    run_dir = tmp_path / "run"
    killed = run_killed([*overrides, f"hydra.run.dir={run_dir}"], kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    # the half-written file is the hidden temporary one; last.ckpt is the save before it
    assert len(temp_files(last)) == 1
    assert torch.load(last, weights_only=True)["global_step"] == 3 * (kill_at - 1)
    assert not (run_dir / "best_arch.json").exists()

    torch.manual_seed(1234)  # this process's global RNG is not the killed one's
    with caplog.at_level("INFO", logger="rankitect.checkpoint"):
        got = run_search([*overrides, "resume=auto"], run_dir)
    assert f"resume=auto: resuming from {last}" in caplog.text
    assert temp_files(last) == []  # the next good save removed the torn one
    expected = run_search(overrides, tmp_path / "full")
    assert json.loads((run_dir / "best_arch.json").read_text()) == expected["arch"]
    assert got["decision_probs"] == expected["decision_probs"]
    assert got["curves"] == expected["curves"]
    assert got["steps"] == expected["steps"]


def test_oneshot_rl_killed_mid_save_resumes_to_the_same_architecture(tmp_path, caplog):
    kill_and_resume(tmp_path, RL, saves=10, seed=8, caplog=caplog)  # 32 steps: saves at 3, ..., 30


def test_dnas_killed_mid_save_resumes_to_the_same_architecture(tmp_path, caplog):
    kill_and_resume(tmp_path, DNAS, saves=5, seed=8, caplog=caplog)  # 15 steps: at 3, ..., 15


def test_resume_names_a_missing_checkpoint(tmp_path):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=[*RL, f"resume={tmp_path / 'nope.ckpt'}"])
    with pytest.raises(FileNotFoundError, match="resume: checkpoint .*nope.ckpt"):
        search(cfg, tmp_path)


# ---- the mid-epoch data order ------------------------------------------------------------------


def _train_loader(num_workers: int):
    src = SyntheticCTR(n_train=200, n_val=10, n_test=10, seed=0)
    dm = CTRDataModule(src, batch_size=32, cache=False, seed=4, num_workers=num_workers)
    dm.setup("fit")
    return dm.train_dataloader()  # 7 batches, the last of 8 rows


def _through_a_checkpoint(state: dict) -> dict:
    """``state`` saved and loaded as Lightning does in a checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _epoch(num_workers: int, epoch: int) -> list[torch.Tensor]:
    loader = _train_loader(num_workers)
    loader.sampler.set_epoch(epoch)
    return [b[2] for b in loader]


def _same(got: list[torch.Tensor], want: list[torch.Tensor]) -> bool:
    return len(got) == len(want) and all(map(torch.equal, got, want))


def _resumed(num_workers: int, state: dict, epoch: int):
    """A fresh process's loader given ``state`` as Lightning gives it: ``load_state_dict``,
    ``iter()``, then the sampler's ``set_epoch``."""
    loader = _train_loader(num_workers)
    loader.load_state_dict(_through_a_checkpoint(state))
    it = iter(loader)
    loader.sampler.set_epoch(epoch)
    return loader, it


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_resumed_loader_continues_the_interrupted_epochs_permutation(num_workers, monkeypatch):
    labels = _epoch(num_workers, 2)
    loader = _train_loader(num_workers)
    loader.sampler.set_epoch(2)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    del it, loader

    gathers = []
    real_getitem = SplitBatches.__getitem__
    monkeypatch.setattr(
        SplitBatches, "__getitem__", lambda ds, idx: gathers.append(1) or real_getitem(ds, idx)
    )
    resumed, it = _resumed(num_workers, state, 2)
    assert _same([next(it)[2] for _ in range(2)], labels[3:5])
    if num_workers == 0:  # (a worker's gathers are not seen here)
        assert len(gathers) == 2  # the three skipped batches were not fetched
    # killed again: the state of a resumed pass counts the batches before the resume too
    state = resumed.state_dict()
    del it, resumed
    resumed, it = _resumed(num_workers, state, 2)
    assert _same([next(it)[2] for _ in range(2)], labels[5:])
    # the skip applies once: the next epoch is whole
    resumed.sampler.set_epoch(3)
    assert _same([b[2] for b in resumed], _epoch(num_workers, 3))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_loader_saved_on_its_last_batch_resumes_at_the_next_epoch(num_workers):
    loader = _train_loader(num_workers)
    loader.sampler.set_epoch(2)
    it = iter(loader)
    for _ in range(len(loader)):  # Lightning stops at the length, before StopIteration
        next(it)
    state = loader.state_dict()
    del it, loader
    _, it = _resumed(num_workers, state, 3)
    assert _same([next(it)[2] for _ in range(7)], _epoch(num_workers, 3))


def _rank_loader(num_workers: int, rank: int):
    """The training loader of rank ``rank`` of 2 as Lightning builds it under DDP: the same
    loader class over its `DistributedSamplerWrapper` of the data module's sampler."""
    plain = _train_loader(num_workers)
    sampler = DistributedSamplerWrapper(plain.sampler, num_replicas=2, rank=rank, shuffle=True)
    return ResumableLoader(
        plain.dataset,
        batch_size=None,
        sampler=sampler,
        collate_fn=plain.collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_resumed_rank_continues_its_share_of_a_later_epoch(rank, num_workers):
    """Lightning's wrapper has no state: torchdata skips as many of its batches, and must list
    them at the resumed epoch (Lightning sets it after ``iter()``)."""
    loader = _rank_loader(num_workers, rank)
    loader.sampler.set_epoch(2)
    labels = [b[2] for b in loader]
    assert len(labels) == 4  # 7 batches over 2 ranks, one repeated
    loader = _rank_loader(num_workers, rank)
    loader.sampler.set_epoch(2)
    it = iter(loader)
    next(it)
    state = _through_a_checkpoint(loader.state_dict())
    del it, loader
    resumed = _rank_loader(num_workers, rank)
    resumed.load_state_dict(state)
    it = iter(resumed)
    resumed.sampler.set_epoch(2)
    assert _same([b[2] for b in it], labels[1:])


def test_a_loader_between_passes_gives_its_state_without_touching_the_global_rng():
    """A search's checkpoint saves the global RNG right after the loader's state: asking it
    must not draw (torchdata would build an iterator for it, drawing its seed)."""
    loader = _train_loader(0)
    rng = torch.get_rng_state()
    assert loader.state_dict() == {}  # no pass under way: the next starts afresh
    assert torch.equal(torch.get_rng_state(), rng)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    resumed = _train_loader(0)
    resumed.load_state_dict(state)
    rng = torch.get_rng_state()
    assert resumed.state_dict() == state  # loaded, not yet resumed: the same position
    assert torch.equal(torch.get_rng_state(), rng)
