"""One-shot RL under DDP: two CPU processes (gloo) end with the same policy.

The test runs this file as a script with ``strategy="ddp"``; Lightning re-launches the same
command for rank 1, and each rank writes what it saw to ``<out>/rank<r>.pt``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    import lightning as L

    from rankitect.data.datamodule import CTRDataModule
    from rankitect.data.synthetic import SyntheticCTR
    from rankitect.search.oneshot import OneShotRL
    from rankitect.space import generic_space

    torch.set_num_threads(1)
    L.seed_everything(0)
    source = SyntheticCTR(
        n_train=1024,
        n_val=128,
        n_test=128,
        n_dense=2,
        cardinalities=(6, 7, 8),
        interactions=[("C1", "C2")],
        gates=[("I1", "C3")],
        seed=1,
    )
    dm = CTRDataModule(source, batch_size=32, cache=False)
    dm.setup("fit")
    space = generic_space(
        dm.feature_spec,
        num_choices=2,
        blocks=["linear", "dot_product", "pairwise_sum"],
        distances=[1],
        dims={"linear": [4, 8], "dot_product": [2, 3]},
        embedding_dim=4,
        bottleneck=4,
    )
    method = OneShotRL(
        baseline={
            "_target_": "rankitect.models.DNN",
            "_partial_": True,
            "embedding_dim": 4,
            "hidden_units": [8],
        },
        samples_per_update=4,
        off_policy_updates=2,
        warmup_steps=2,
        policy_lr=0.1,
    )
    module, callbacks = method.build(space)
    sampled = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sampled.append(pl_module.arch)

    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",
        max_epochs=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, Spy()],
    )
    trainer.fit(module, datamodule=dm)
    rl = callbacks[0]
    torch.save(
        {
            "logits": rl.policy.logits.detach(),
            "updates": rl.learner.updates,
            "steps": trainer.global_step,
            "archs": [None if a is None else a.to_json() for a in sampled],
            "found": method.outcome(module, callbacks).arch.to_json(),
        },
        out / f"rank{trainer.global_rank}.pt",
    )


def test_every_rank_ends_with_the_same_policy(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # 1024 rows / 32 per batch / 2 ranks = 16 steps; 14 after the warm-up, 2 samples a step
    assert ranks[0]["steps"] == ranks[1]["steps"] == 16
    assert ranks[0]["updates"] == ranks[1]["updates"] == 7
    assert torch.equal(ranks[0]["logits"], ranks[1]["logits"])
    assert ranks[0]["found"] == ranks[1]["found"]
    # the ranks draw their own subnets: the gathered samples are not duplicates
    policy_steps = list(zip(ranks[0]["archs"][2:], ranks[1]["archs"][2:], strict=True))
    assert sum(a != b for a, b in policy_steps) > len(policy_steps) // 2


if __name__ == "__main__":
    main(Path(sys.argv[1]))
