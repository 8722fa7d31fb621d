"""Hydra multiruns through the joblib and submitit (local) launcher plugins, end to end: the
console script, two jobs, each run once in its own process and writing its own results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
TINY = [
    "data.source.n_train=2000",
    "data.source.n_val=200",
    "data.source.n_test=200",
    "trainer.max_epochs=1",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib"],
    # submitit waits for its jobs up to timeout_min, then kills them
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_multirun_through_a_launcher_plugin_runs_each_job_once(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    args = ["-m", *LAUNCHERS[launcher], "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(BIN / "rankitect-train"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.rglob("results.json")) == ["0", "1"]
    for job in ("0", "1"):
        log = (sweep / job / "train.log").read_text()
        assert log.count("wrote ") == 1  # the job ran once
        assert json.loads((sweep / job / "results.json").read_text())["seed"] == int(job)
    # every job wrote into the sweep directory, none into the working directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
