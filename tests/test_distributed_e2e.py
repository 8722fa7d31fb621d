"""Distributed runs end to end on CPU: two gloo processes per run.

The console scripts run as subprocesses, as a user runs them: Lightning's ``ddp`` re-launches
the command line for rank 1, so only a real script exercises that path. Select the
multi-process tests with ``-m distributed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from rankitect.cli.config import conf_dir
from rankitect.data import FeatureSpec
from rankitect.lit import CTRModule, DNASModule, SupernetModule
from rankitect.search.run import trainer_options
from rankitect.space import generic_space
from rankitect.space.supernet import Supernet
from rankitect.train import build_module

BIN = Path(sys.executable).parent
CPU2 = ["trainer.accelerator=cpu", "trainer.devices=2"]
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none"]
# 600 validation and test rows: even, so DistributedSampler splits them without padding (an
# odd count would add a duplicated row to one rank and the DDP metrics would count it twice).
TRAIN = [
    "data.source.n_train=2000",
    "data.source.n_val=600",
    "data.source.n_test=600",
    "data.batch_size=200",
    "model=dnn",
    "model.hidden_units=[16]",
    "module.lr=0.02",
    "trainer.max_epochs=2",
    *QUIET,
]
SEARCH = [
    "final=none",
    "search_space=generic",
    "data.source.n_train=1024",
    "data.source.n_val=256",
    "data.source.n_test=64",
    "data.batch_size=64",
    *QUIET,
]
ONESHOT = [
    "method=oneshot_rl",
    "method.baseline=lr",
    "method.target_flops=5000",
    "method.samples_per_update=4",
    "method.off_policy_updates=2",
    "method.warmup_steps=2",
    "trainer.max_epochs=1",
]
DNAS = [
    "method=dnas",
    "data.batch_size=64",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "method.flops_max_realisations=4",
    "method.target_flops=5000",
]


def run_script(name: str, args: list[str], cwd: Path, timeout: int = 150):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(
        [str(BIN / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def log_text(run_dir: Path) -> dict[str, str]:
    """Hydra's log file of each process: rank 1's is ``train_ddp_process_1.log``."""
    return {p.name: p.read_text() for p in run_dir.glob("*.log")}


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_train_under_ddp_evaluates_like_one_process(tmp_path):
    run = tmp_path / "run"
    proc = run_script(
        "rankitect-train", ["trainer=ddp", *CPU2, *TRAIN, f"hydra.run.dir={run}"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    # 2000 rows / 2 ranks / 200 per batch = 5 steps per epoch, on each rank
    assert (results["steps"], results["epochs"]) == (10, 2)
    # rank 1 ran in the same run directory, and only rank 0 wrote results.json
    logs = log_text(run)
    assert "train_ddp_process_1.log" in logs and len(logs) == 2, sorted(logs)
    assert sum(text.count("wrote ") for text in logs.values()) == 1

    # The same checkpoint evaluated by one process: torchmetrics all-reduce their states, so
    # DDP evaluation of the same weights equals it (up to float summation order). Training
    # itself is not compared: two ranks average gradients over twice the global batch.
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=TRAIN)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = build_module(cfg, instantiate(cfg.model)(spec=datamodule.feature_spec))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    ckpt = results["best_epoch_checkpoint"]
    for split, evaluate in (("val", trainer.validate), ("test", trainer.test)):
        single = evaluate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
        for name in ("auc", "logloss", "ne"):
            expected = single[f"{split}/{name}"]
            assert results[split][name] == pytest.approx(expected, rel=1e-6), (split, name)


def rank_digests(logs: dict[str, str]) -> dict[int, str]:
    found = re.findall(r"rank (\d) found architecture (\w+)", "\n".join(logs.values()))
    return {int(rank): digest for rank, digest in found}


@pytest.mark.distributed
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("method", "steps"),
    # one-shot RL: 1024 rows / 2 ranks / 64 per batch, one epoch; DNAS: max_steps
    [(ONESHOT, 8), (DNAS, 6)],
    ids=["oneshot_rl", "dnas"],
)
def test_search_under_ddp_ends_with_one_architecture_on_every_rank(tmp_path, method, steps):
    run = tmp_path / "run"
    args = ["trainer=ddp", *CPU2, *SEARCH, *method, f"hydra.run.dir={run}"]
    proc = run_script("rankitect-search", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == steps
    logs = log_text(run)
    assert sum(text.count("; wrote ") for text in logs.values()) == 1
    digests = rank_digests(logs)
    arch_json = (run / "best_arch.json").read_text().strip()
    assert digests == {r: hashlib.sha1(arch_json.encode()).hexdigest()[:12] for r in (0, 1)}
    if method is ONESHOT:  # plain ddp was switched to its find_unused_parameters variant
        assert "ddp -> ddp_find_unused_parameters_true" in "\n".join(logs.values())


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_multirun_with_ddp_spawn_runs_each_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "trainer=ddp_spawn",
        *CPU2,
        *SEARCH,
        *ONESHOT,
        "method.alpha=0.2,0.8",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_script("rankitect-search", args, tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent.name for p in sweep.rglob("results.json"))
    assert jobs == ["0", "1"]
    # nothing else was launched: no second sweep, no stray run directories
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    for job, alpha in (("0", 0.2), ("1", 0.8)):
        results = json.loads((sweep / job / "results.json").read_text())
        assert results["config"]["method"]["alpha"] == alpha
        # the steps come back from the spawned workers (the main process's counter stays 0)
        assert results["steps"] == 8


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_multirun_with_ddp_fails_before_launching(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "trainer=ddp", *CPU2, *SEARCH, *ONESHOT, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = run_script("rankitect-search", args, tmp_path)
    assert proc.returncode != 0
    assert "re-run the whole sweep" in proc.stderr and "trainer=ddp_spawn" in proc.stderr
    assert not list(sweep.rglob("results.json"))
    assert not list(sweep.rglob("train_ddp_process_*.log"))


@pytest.mark.distributed
@pytest.mark.timeout(200)
def test_multirun_under_torchrun_runs_each_job_once(tmp_path):
    """torchrun starts both ranks, each runs the sweep job by job; Lightning starts nothing."""
    sweep = tmp_path / "sweep"
    args = [
        "--standalone",
        "--nproc-per-node=2",
        str(BIN / "rankitect-train"),
        "-m",
        "trainer=ddp",
        *CPU2,
        *TRAIN,
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_script("torchrun", args, tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.rglob("results.json")) == ["0", "1"]
    for job in ("0", "1"):
        # both ranks log into the job's train.log; rank 0 alone wrote its results.json
        assert (sweep / job / "train.log").read_text().count("wrote ") == 1
        assert json.loads((sweep / job / "results.json").read_text())["seed"] == int(job)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


# ---- unused parameters: a hard-masked supernet under DDP --------------------------------------


def tiny_space():
    spec = FeatureSpec(n_dense=2, sparse_cardinalities=(6, 7, 8))
    return generic_space(
        spec,
        num_choices=2,
        blocks=["linear", "dot_product", "pairwise_sum"],
        distances=[1],
        dims={"linear": [4, 8], "dot_product": [2, 3]},
        embedding_dim=4,
        bottleneck=4,
    )


def rank_batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    dense = torch.randn(16, 2, generator=g)
    sparse = torch.stack([torch.randint(0, c, (16,), generator=g) for c in (6, 7, 8)], dim=1)
    label = (torch.rand(16, generator=g) < 0.3).float()
    return dense, sparse, label


def two_archs(space):
    """Two architectures with different blocks: parameters used on one rank only."""
    archs = [space.sample(torch.Generator().manual_seed(s)) for s in range(50)]
    first = archs[0]
    second = next(a for a in archs if a.to_json() != first.to_json())
    return first, second


def fresh_supernet(space) -> Supernet:
    torch.manual_seed(0)
    return Supernet(space)


def _unused_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        space = tiny_space()
        archs = two_archs(space)
        dense, sparse, label = rank_batch(rank)
        # find_unused_parameters=True (what ddp_find_unused_parameters_true passes): each rank
        # trains its own subnet
        ddp = DistributedDataParallel(fresh_supernet(space), find_unused_parameters=True)
        F.binary_cross_entropy_with_logits(ddp(dense, sparse, arch=archs[rank]), label).backward()
        grads = {
            n: None if p.grad is None else p.grad.clone() for n, p in ddp.module.named_parameters()
        }
        # plain DDP, the same subnet on both ranks: the reducer still waits for the unused
        # parameters' gradients, and the next forward fails instead of skipping them
        plain = DistributedDataParallel(fresh_supernet(space))
        error = None
        for _ in range(2):
            try:
                loss = F.binary_cross_entropy_with_logits(
                    plain(dense, sparse, arch=archs[0]), label
                )
            except RuntimeError as err:
                error = str(err)
                break
            loss.backward()
        torch.save({"grads": grads, "error": error}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_unused_parameters_get_rank_averaged_gradients(tmp_path):
    mp.spawn(_unused_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # Single process: each rank's subnet on its own batch; DDP's average counts a parameter a
    # rank did not use as a zero gradient there.
    space = tiny_space()
    local = []
    for rank, arch in enumerate(two_archs(space)):
        net = fresh_supernet(space)
        dense, sparse, label = rank_batch(rank)
        F.binary_cross_entropy_with_logits(net(dense, sparse, arch=arch), label).backward()
        local.append({n: p.grad for n, p in net.named_parameters()})
    one_rank_only = both_unused = 0
    for name, g0 in local[0].items():
        g1 = local[1][name]
        got0, got1 = ranks[0]["grads"][name], ranks[1]["grads"][name]
        if g0 is None and g1 is None:
            both_unused += 1
            assert got0 is None and got1 is None, name
            continue
        one_rank_only += (g0 is None) != (g1 is None)
        expected = sum(g for g in (g0, g1) if g is not None) / 2
        assert torch.equal(got0, got1), name
        assert torch.allclose(got0, expected, atol=1e-7), name
    # the planted situation holds: some parameters used on one rank only, some on none
    assert one_rank_only > 0 and both_unused > 0
    for rank in ranks:
        assert rank["error"] is not None and "finished reduction" in rank["error"]


def test_search_picks_the_find_unused_parameters_variant():
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = {
            t: compose("search", overrides=[f"trainer={t}"]) for t in ("cpu", "ddp", "ddp_spawn")
        }
    space = tiny_space()
    supernet, dnas = SupernetModule(space, baseline=None), DNASModule(space)
    assert trainer_options(cfg["ddp"], supernet)["strategy"] == "ddp_find_unused_parameters_true"
    assert (
        trainer_options(cfg["ddp_spawn"], supernet)["strategy"]
        == "ddp_spawn_find_unused_parameters_true"
    )
    assert "strategy" not in trainer_options(cfg["cpu"], supernet)
    # soft masks give every weight a gradient: DNAS keeps plain DDP
    assert trainer_options(cfg["ddp"], dnas)["strategy"] == "ddp"


# ---- FSDP: what can be checked on a CPU ----------------------------------------------------


def test_fsdp_config_composes_and_lightning_refuses_it_on_cpu():
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=fsdp"])
    assert (cfg.trainer.strategy, cfg.trainer.accelerator) == ("fsdp", "gpu")
    options = {**cfg.trainer, "accelerator": "cpu", "devices": 2}
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(**options, logger=False)


def test_ctr_module_builds_a_deferred_model_once_in_configure_model():
    from rankitect.models import DNN

    spec = FeatureSpec(n_dense=2, sparse_cardinalities=(6, 7, 8))
    built = []

    def build():
        torch.manual_seed(0)
        built.append(DNN(spec, embedding_dim=4, hidden_units=[8], emb_l2=0.25))
        return built[-1]

    module = CTRModule(build, lr=0.05)
    assert module.model is None and built == []
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(256, 2, generator=g)
    sparse = torch.stack([torch.randint(0, c, (256,), generator=g) for c in (6, 7, 8)], dim=1)
    label = (torch.sigmoid(2 * dense[:, 0]) > torch.rand(256, generator=g)).float()
    loader = DataLoader(TensorDataset(dense, sparse, label), batch_size=64)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = [p.detach().clone() for p in build().parameters()]
    built.clear()
    trainer.fit(module, loader, loader)
    trainer.validate(module, loader, verbose=False)
    # configure_model ran before fit and validate but built once; the module took the built
    # model's emb_l2, and the optimiser (made after the model existed) trained its weights
    assert len(built) == 1 and module.model is built[0]
    assert module.emb_l2 == 0.25
    assert trainer.global_step == 8
    trained = list(module.model.parameters())
    assert all(a.shape == b.shape for a, b in zip(start, trained, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(start, trained, strict=True))
