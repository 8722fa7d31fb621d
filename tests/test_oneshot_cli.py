"""`rankitect-search method=oneshot_rl` end to end: a two-job Hydra multirun over FLOPs targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rankitect.data.synthetic import SyntheticCTR
from rankitect.space import load_space

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (40000, 90000)


def test_multirun_writes_a_valid_architecture_per_flops_target(tmp_path):
    sweep = tmp_path / "multirun"
    rows = {"n_train": 2048, "n_val": 256, "n_test": 256}
    cmd = [
        sys.executable,
        "-m",
        "rankitect.cli.search",
        "-m",
        "method=oneshot_rl",
        "final=none",
        f"method.target_flops={','.join(map(str, TARGETS))}",
        "method.samples_per_update=4",
        "method.warmup_steps=4",
        *(f"data.source.{k}={v}" for k, v in rows.items()),
        "data.batch_size=128",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # the space the CLI searched: the shipped one, on the synthetic data's features
    space = load_space("rankitect", SyntheticCTR().spec)
    for job, target in enumerate(TARGETS):
        out = sweep / str(job)
        arch = space.arch_from_json((out / "best_arch.json").read_text())
        results = json.loads((out / "results.json").read_text())
        assert results["method"] == "oneshot_rl"
        assert results["flops"] == space.flops(arch)
        assert results["target_flops"] == target
        assert results["steps"] == 16  # 2048 rows / 128
        assert results["policy_updates"] == 3  # (16 - 4 warm-up steps) / 4
        assert set(results["decision_probs"]) == {d.name for d in space.decisions}
        assert len(results["curves"]["reward"]) == 3
        assert set(results["supernet_val"]) == {"ne", "ne_baseline", "ne_pct"}
        assert (out / "curves.png").stat().st_size > 0
