"""The lightning-hydra-template conventions: the `callbacks`, `module` and `paths` groups, the
search callbacks of the method configs, and search spaces built with `hydra.utils.instantiate`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from omegaconf import OmegaConf

from rankitect.callbacks import GumbelTemperature, RLSearchCallback
from rankitect.callbacks.progress import LogProgress
from rankitect.cli.config import conf_dir
from rankitect.data import FeatureSpec
from rankitect.lit import CTRModule, DNASModule, SupernetModule
from rankitect.search.finalize import FinalConfig, recipe_config
from rankitect.space import load_space
from rankitect.train import build_callbacks, build_module, train, with_output_dir

TINY = [
    "data.source.n_train=2000",
    "data.source.n_val=500",
    "data.source.n_test=500",
    "data.batch_size=256",
    "module.lr=0.02",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
SPEC = FeatureSpec(n_dense=2, sparse_cardinalities=(5, 7, 9))


def compose_cfg(name: str, *overrides: str):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def by_type(callbacks):
    return {type(c): c for c in callbacks}


def test_train_callbacks_are_todays_defaults(tmp_path):
    cfg = with_output_dir(compose_cfg("train"), tmp_path)
    callbacks = by_type(build_callbacks(cfg))
    checkpoint, early = callbacks[ModelCheckpoint], callbacks[EarlyStopping]
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_last) == ("val/auc", "max", True)
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints"
    assert (early.monitor, early.mode, early.patience) == ("val/auc", "max", 2)
    assert LogProgress in callbacks  # pytest's stderr is no terminal: log lines, no bar
    patient = compose_cfg("train", "callbacks.early_stopping.patience=5")
    assert by_type(build_callbacks(with_output_dir(patient, tmp_path)))[EarlyStopping].patience == 5
    assert build_callbacks(with_output_dir(compose_cfg("train", "callbacks=none"), tmp_path)) == []
    more = compose_cfg("train", "callbacks=[default,lr_monitor]")
    assert set(by_type(build_callbacks(with_output_dir(more, tmp_path)))) == {
        ModelCheckpoint, EarlyStopping, LogProgress, LearningRateMonitor,
    }  # fmt: skip


def test_search_callbacks_checkpoint_the_search_state(tmp_path):
    cfg = with_output_dir(compose_cfg("search", "checkpoint_every_n_steps=7"), tmp_path)
    callbacks = by_type(build_callbacks(cfg))
    assert EarlyStopping not in callbacks
    checkpoint = callbacks[ModelCheckpoint]
    assert checkpoint.monitor is None and checkpoint.save_top_k == 0 and checkpoint.save_last
    assert checkpoint._every_n_train_steps == 7
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints"


def test_the_old_early_stopping_key_says_where_it_went(tmp_path):
    cfg = compose_cfg("train")
    OmegaConf.set_struct(cfg, False)
    cfg.early_stopping = {"patience": 3}
    with pytest.raises(ValueError, match=r"callbacks\.early_stopping"):
        train(cfg, tmp_path)


def test_final_retrains_read_the_train_callbacks():
    cfg = compose_cfg("search", "final.patience=4")
    final = FinalConfig.from_config(cfg.final)
    run_cfg = recipe_config(cfg, final, {"_target_": "x"}, 0, 3)
    assert run_cfg.callbacks.early_stopping.patience == 4
    assert run_cfg.callbacks.model_checkpoint.monitor == "val/auc"
    assert run_cfg.module._target_ == "rankitect.lit.CTRModule"
    assert run_cfg.paths.data_dir == cfg.paths.data_dir


def test_module_is_instantiated_and_overridable():
    import torch

    cfg = compose_cfg("train", "module.lr=0.05", "module.weight_decay=0.1")
    module = build_module(cfg, torch.nn.Linear(2, 1))
    assert isinstance(module, CTRModule)
    assert module.hparams.lr == 0.05 and module.hparams.weight_decay == 0.1


def test_paths_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKITECT_DATA_ROOT", str(tmp_path / "data"))
    # outside a Hydra run (the compose API) the whole config resolves, output_dir to "."
    assert OmegaConf.to_container(compose_cfg("search"), resolve=True)["paths"]["output_dir"] == "."
    for name in ("train", "search", "tune_system"):
        cfg = with_output_dir(compose_cfg(name, "data=frappe"), tmp_path / "run")
        assert cfg.paths.data_dir == str(tmp_path / "data")
        assert cfg.paths.output_dir == str(tmp_path / "run")
        assert cfg.paths.log_dir == "./outputs"
        assert cfg.data.source.root == str(tmp_path / "data" / "frappe_x1")


def test_search_callbacks_come_from_the_method_configs():
    dnas = instantiate(compose_cfg("search", "method=dnas").method)
    assert isinstance(dnas.temperature, GumbelTemperature)
    assert (dnas.temperature.schedule, dnas.temperature.start, dnas.temperature.end) == (
        "exponential", 5.0, 0.2,
    )  # fmt: skip
    linear = compose_cfg("search", "method=dnas", "method.temperature.schedule=linear")
    assert instantiate(linear.method).temperature.schedule == "linear"
    # another schedule, config-only: any Callback class as the _target_
    swapped = compose_cfg(
        "search", "method=dnas", "~method.temperature",
        "+method.temperature._target_=test_hydra_conventions.ConstantTemperature",
        "+method.temperature.value=0.7",
    )  # fmt: skip
    assert isinstance(instantiate(swapped.method).temperature, ConstantTemperature)
    rl = instantiate(compose_cfg("search", "method=oneshot_rl").method)
    space = load_space("rankitect", SPEC)
    module, callbacks = rl.build(space)
    assert isinstance(callbacks[0], RLSearchCallback) and callbacks[0].alpha == 0.5


class ConstantTemperature(GumbelTemperature):
    """A user's schedule: one temperature throughout."""

    def __init__(self, value: float) -> None:
        super().__init__(start=value, end=value, anneal_steps=1)


def test_a_space_with_a_wrong_target_is_a_clear_error(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("_target_: no.such.builder\nkind: generic\n")
    with pytest.raises(ValueError, match=r"_target_.*no\.such\.builder"):
        load_space(str(path), SPEC)
    with pytest.raises(ValueError, match=r"unknown generic search space key.*num_choice"):
        load_space({"kind": "generic", "num_choice": 3}, SPEC)


def test_callbacks_added_and_removed_on_the_command_line(tmp_path):
    """A real `rankitect-train`: ``~callbacks.early_stopping`` and ``+callbacks.<name>``."""
    out = subprocess.run(
        [sys.executable, "-m", "rankitect.cli.train", "model=lr", *TINY,
         "~callbacks.early_stopping",
         "+callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert "early_stopping" not in config.callbacks
    assert config.callbacks.lr_monitor._target_.endswith(LearningRateMonitor.__name__)
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 2 and Path(results["best_epoch_checkpoint"]).is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    (metrics,) = (run / "csv").rglob("metrics.csv")
    with metrics.open() as f:
        assert any(k.startswith("lr-") for k in next(csv.reader(f)))  # the monitor logged


class MySupernet(SupernetModule):
    """A user's own one-shot LightningModule, swapped in config-only."""


class MyDNASModule(DNASModule):
    """A user's own DNAS LightningModule, swapped in config-only."""


@pytest.mark.parametrize(
    ("method", "default", "mine"),
    [("oneshot_rl", SupernetModule, MySupernet), ("dnas", DNASModule, MyDNASModule)],
)
def test_the_search_lightning_module_is_instantiated_from_the_method_config(method, default, mine):
    space = load_space("rankitect", SPEC)
    built, _ = instantiate(compose_cfg("search", f"method={method}").method).build(space)
    assert type(built) is default
    swap = f"method.module._target_={__name__}.{mine.__name__}"
    built, _ = instantiate(compose_cfg("search", f"method={method}", swap).method).build(space)
    assert type(built) is mine and built.space is space
