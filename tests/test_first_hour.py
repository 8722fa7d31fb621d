"""What a new user meets in a first hour (issue 17): a mistake prints one line and no traceback,
warnings where a result means nothing, progress that reads well in a log file, messages that
say how to load a DHEN architecture."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import OmegaConf

from rankitect.callbacks.progress import LogProgress, progress_callback, with_progress
from rankitect.cli.config import conf_dir
from rankitect.cli.entry import console_script, quiet_third_party, user_error_message
from rankitect.data import DataFormatError, FeatureSpec
from rankitect.data.synthetic import SyntheticCTR
from rankitect.search.outcome import curves_figure
from rankitect.search.sanity import cheapest, unreachable_target, unsearched
from rankitect.space import Arch, build_arch_model, load_space

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.source.n_train=512", "data.source.n_val=128", "data.source.n_test=128"]


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose(name, overrides=overrides)


# ---- errors: one line for a user's mistake, a traceback for a bug ---------------------------


def _instantiation_error(cfg: dict) -> InstantiationException:
    with pytest.raises(InstantiationException) as info:
        instantiate(OmegaConf.create({"data": cfg}).data)
    return info.value


def test_user_errors_become_one_line_naming_the_key_and_bugs_stay_tracebacks():
    unknown_key = _instantiation_error({"_target_": "rankitect.data.CTRDataModule", "foo": 1})
    assert user_error_message(unknown_key) == (
        "config data: CTRDataModule.__init__() got an unexpected keyword argument 'foo'"
    )
    typo = _instantiation_error({"_target_": "rankitect.dta.CTRDataModule"})
    assert (
        user_error_message(typo)
        == "config data: Error locating target 'rankitect.dta.CTRDataModule'"
    )
    bad_value = _instantiation_error({"_target_": "rankitect.data.SyntheticCTR", "n_train": -3})
    message = user_error_message(bad_value)
    assert (
        message.startswith("config data: SyntheticCTR: every split needs") and "\n" not in message
    )
    bad_row = DataFormatError("/d/train.csv", "label must be 0 or 1, got '2'", 3, "label")
    assert (
        user_error_message(bad_row)
        == "/d/train.csv, line 3, column 'label': label must be 0 or 1, got '2'"
    )
    worker = RuntimeError(
        "Caught DataFormatError in DataLoader worker process 0.\nOriginal Traceback (most "
        "recent call last):\n  File ...\nrankitect.data.errors.DataFormatError: /d/day_0, "
        "line 7: expected 40 fields, found 39"
    )
    assert user_error_message(worker) == "/d/day_0, line 7: expected 40 fields, found 39"
    for bug in (KeyError("x"), TypeError("unsupported operand"), RuntimeError("shape mismatch")):
        assert user_error_message(bug) is None


def test_console_script_exits_2_with_one_line_and_reraises_bugs(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @console_script("rankitect-x")
    def user_mistake(cfg):
        raise ValueError("data.batch_size must be >= 1,\n got 0")

    with pytest.raises(SystemExit) as exit_:
        user_mistake(OmegaConf.create({"data": {"batch_size": 0}}))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "rankitect-x: error: data.batch_size must be >= 1, got 0\n"

    with pytest.raises(SystemExit):  # a mandatory value left unset is named before the body runs
        user_mistake(OmegaConf.create({"model": {"arch_file": "???"}}))
    assert "missing value for model.arch_file" in capsys.readouterr().err

    @console_script("rankitect-x")
    def bug(cfg):
        raise KeyError("internal")

    with pytest.raises(KeyError):
        bug(OmegaConf.create({}))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the full traceback on request
    with pytest.raises(ValueError):
        user_mistake(OmegaConf.create({}))


def test_a_data_mistake_on_the_command_line_prints_one_line(tmp_path):
    """The whole path once: Hydra composes, the console script catches, the process exits."""
    cmd = [sys.executable, "-m", "rankitect.cli.train", "data=frappe",
           f"data.source.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    # the last line (Lightning's "Seed set to 0" comes first)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"rankitect-train: error: {tmp_path}/train.csv: file not found"
    )


def test_lightning_noise_is_silenced(caplog):
    from lightning.pytorch.utilities._pytree import _tree_flatten
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        _tree_flatten(1)  # Lightning's own use of torch's deprecated LeafSpec
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    caplog.set_level(logging.INFO)
    rank_zero_info("💡 Tip: For seamless cloud logging ... try installing litlogger")
    rank_zero_info("GPU available: False")
    assert "litlogger" not in caplog.text and "GPU available" in caplog.text


# ---- DHEN architectures: the message names the format and the loader ------------------------


def test_a_dhen_arch_file_read_as_a_choice_arch_says_how_to_load_it(tmp_path):
    spec = FeatureSpec(n_dense=0, sparse_cardinalities=(10, 20, 30))
    dhen = load_space("dhen2", spec)
    path = tmp_path / "best_arch.json"
    path.write_text(dhen.seed_arch().to_json())
    with pytest.raises(ValueError, match=r"'layers' and 'head', a DHEN space's architecture"):
        Arch.from_json(path.read_text())
    with pytest.raises(ValueError, match=r"model.space must be the space it was searched in"):
        build_arch_model(spec, "rankitect", path)
    assert build_arch_model(spec, "dhen2", path) is not None


# ---- results that mean nothing say so --------------------------------------------------------


def test_the_cheapest_architecture_and_an_unreachable_target():
    space = load_space("rankitect", SyntheticCTR().spec)
    arch, flops = cheapest(space)
    assert space.flops(arch) == flops < space.flops(space.seed_arch())
    # no single decision change makes it cheaper
    values = space.values(arch).tolist()
    for i, d in enumerate(space.decisions):
        for v in range(d.cardinality):
            assert space.flops(space.decode([*values[:i], v, *values[i + 1 :]])) >= flops
    warning = unreachable_target(space, ("method.target_flops", 10))
    assert (
        f"costs {flops:,} FLOPs" in warning
        and f"method.target_flops to at least {flops}" in warning
    )
    assert unreachable_target(space, ("method.target_flops", flops)) is None
    assert unreachable_target(space, None) is None


def test_a_search_too_short_to_move_its_distribution_is_flagged():
    assert "policy_updates: 0" in unsearched({"policy_updates": 0}, 10)
    assert unsearched({"policy_updates": 3}, 10) is None
    dnas = {"warmup_steps": 20, "theta_frozen_in_warmup": True}
    assert "every one of the 20 steps was warm-up" in unsearched(dnas, 20)
    assert unsearched(dnas, 21) is None
    assert unsearched({**dnas, "theta_frozen_in_warmup": False}, 5) is None


def test_a_search_run_warns_in_its_last_lines_and_results(tmp_path, caplog):
    from rankitect.search.run import search

    cfg = compose_cfg("search", [
        "method=oneshot_rl", "method.target_flops=10", "method.warmup_steps=1.0", *TINY,
        "data.batch_size=128", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "logger=none", "final=none",
    ])  # fmt: skip
    caplog.set_level(logging.INFO, logger="rankitect.search.run")
    results = search(cfg, tmp_path)
    assert results["policy_updates"] == 0
    unreachable, unsearched_ = results["warnings"]
    assert unreachable.startswith("method.target_flops=10 is unreachable")
    assert unsearched_.startswith("the RL policy was never updated")
    lines = [r.getMessage() for r in caplog.records if r.name == "rankitect.search.run"]
    assert lines[-2:] == results["warnings"]
    assert "than the in-place baseline's" in lines[-4]
    assert "rankitect-train model=arch model.space=rankitect" in lines[-3]


def test_curves_mark_the_warm_up_and_the_flops_target():
    curves = {"reward": [(5, 0.1), (9, 0.2)], "most_likely_flops": [(5, 9e4), (9, 7e4)]}
    fig = curves_figure(curves, "t", warmup_steps=4, target_flops=6e4)
    reward, flops = fig.axes
    for ax in (reward, flops):
        assert ax.get_xlim()[0] == 0
        assert "warm-up" in ax.get_legend_handles_labels()[1]
    (target,) = [line for line in flops.get_lines() if line.get_label() == "FLOPs target"]
    assert list(target.get_ydata()) == [6e4, 6e4]
    assert "FLOPs target" not in reward.get_legend_handles_labels()[1]


# ---- progress in a log file ------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_log_lines_when_stderr_is_not_a_terminal(caplog):
    def progress(options, stream):  # what conf/callbacks/progress.yaml builds, then the trainer
        return with_progress(options, [progress_callback(stream=stream)])

    options, callbacks = progress({"enable_progress_bar": True}, io.StringIO())
    assert options["enable_progress_bar"] is False and isinstance(callbacks[0], LogProgress)
    options, callbacks = progress({"enable_progress_bar": True}, _Terminal())
    assert options == {"enable_progress_bar": True} and isinstance(callbacks[0], TQDMProgressBar)
    assert progress({"enable_progress_bar": False}, io.StringIO())[1] == []

    from rankitect.lit import CTRModule
    from rankitect.models import LR

    dm = instantiate(compose_cfg("train", TINY).data)
    dm.setup("fit")
    caplog.set_level(logging.INFO, logger="rankitect.train")
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[LogProgress(every_s=0)], log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(CTRModule(LR(dm.feature_spec)), datamodule=dm)
    lines = [r.getMessage() for r in caplog.records if r.name == "rankitect.train"]
    batches = len(dm.train_dataloader())
    assert lines[0].startswith(f"training: epoch 0, step 1/{batches}")
    assert lines[-1].startswith(f"validated: epoch 0, step {batches}/{batches}: ")
    assert "val/ne=" in lines[-1]


# ---- wandb: the config and the found architecture, no deprecation noise ---------------------


def test_wandb_run_keeps_the_config_and_the_architecture(tmp_path, monkeypatch, capfd):
    import json

    from rankitect.train import build_logger, finish_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "false")
    cfg = compose_cfg("search", ["logger=wandb"])
    config = OmegaConf.to_container(cfg, resolve=True)
    logger = build_logger(cfg.logger, tmp_path, config)
    assert logger.experiment.config["method"] == config["method"]  # the run's whole config
    arch = {"choices": [{"block": "linear", "inputs": [0], "dim": 8}]}
    (tmp_path / "best_arch.json").write_text(json.dumps(arch))
    (tmp_path / "results.json").write_text(json.dumps({"flops": 123, "arch": arch}))
    run, summary = logger.experiment, {}

    def finish() -> None:  # what the run holds when it is closed
        summary.update(json.loads(json.dumps(dict(run.summary), default=dict)))
        type(run).finish(run)

    monkeypatch.setattr(run, "finish", finish)
    finish_logger(logger, tmp_path)
    assert summary == {"flops": 123, "arch": arch}
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    files = run / "files"
    assert json.loads((files / "best_arch.json").read_text()) == arch
    assert (files / "results.json").is_file()
    assert "anonymous setting" not in capfd.readouterr().err


# ---- data: your own CSV files, Criteo day files under other names ----------------------------


def test_data_csv_reads_your_own_files_and_requires_their_folder(tmp_path):
    from rankitect.cli.entry import check_no_missing

    for name in ("train.csv", "valid.csv", "test.csv"):
        rows = ["click\tuser\titem", "1\tu1\tphone", "0\tu2\tlaptop", "0\tu1\tlaptop"]
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    cfg = compose_cfg("train", ["data=csv", f"data.source.root={tmp_path}", "data.cache=false",
                                "data.source.label=click", "data.source.sep=\\t"])  # fmt: skip
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.feature_spec.sparse_names == ("user", "item")
    assert dm.feature_spec.sparse_cardinalities == (3, 3)  # 2 values each + the OOV id
    with pytest.raises(ValueError, match=r"missing value for data.source.root"):
        check_no_missing(compose_cfg("train", ["data=csv"]))


def test_criteo_stream_names_the_files_it_looked_for_and_the_keys_to_change(tmp_path):
    from rankitect.data.errors import DataFileNotFoundError

    cfg = compose_cfg("train", ["data=criteo_stream", f"data.source.root={tmp_path}"])
    with pytest.raises(DataFileNotFoundError) as err:
        instantiate(cfg.data.source).files("train")
    message = str(err.value)
    assert message.startswith(
        f"{tmp_path}/day_0: file not found (split 'train' reads "
        f"train=[day_0, day_1, ..., day_22] under root={tmp_path})"
    )
    assert "data.source.train / val / test" in message
