"""The wheel ships every package and the configs; users extend configs without touching code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def source_packages() -> set[str]:
    inits = (REPO / "rankitect").rglob("__init__.py")
    return {".".join(p.parent.relative_to(REPO).parts) for p in inits} | {"rankitect.conf"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A plain, non-editable install of the checkout into a directory of its own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True,
        capture_output=True,
    )
    return target


def run_train(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # Run from an unrelated directory so only the installed copy can be imported.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run(
        [sys.executable, "-m", "rankitect.cli.train", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def test_wheel_holds_every_source_package_and_config(installed):
    shipped = {
        ".".join(p.parent.relative_to(installed).parts)
        for p in (installed / "rankitect").rglob("*.py")
    } | {"rankitect.conf"}
    assert source_packages() <= shipped
    source_yaml = {p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml")}
    wheel_yaml = {
        p.relative_to(installed / "rankitect" / "conf")
        for p in (installed / "rankitect" / "conf").rglob("*.yaml")
    }
    assert source_yaml == wheel_yaml


def test_installed_cli_composes_its_configs(installed, tmp_path):
    out = run_train(installed, tmp_path, "model=dcnv2", "data=frappe", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "rankitect.models" in out.stdout
    assert "frappe" in out.stdout


def test_user_config_dir_adds_a_model_without_touching_the_package(installed, tmp_path):
    user = tmp_path / "my_conf" / "model"
    user.mkdir(parents=True)
    (user / "wide_dnn.yaml").write_text(
        textwrap.dedent(
            """\
            _target_: rankitect.models.DNN
            _partial_: true
            embedding_dim: 12
            hidden_units: [777, 55]
            """
        )
    )
    out = run_train(
        installed, tmp_path, "--config-dir", str(tmp_path / "my_conf"), "model=wide_dnn",
        "--cfg", "job",
    )
    assert out.returncode == 0, out.stderr
    assert "777" in out.stdout
    # The same through hydra.searchpath, the form a config file can carry.
    out = run_train(
        installed, tmp_path, f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "model=wide_dnn", "--cfg", "job",
    )
    assert out.returncode == 0, out.stderr
    assert "777" in out.stdout


def test_unknown_config_choice_names_the_group(installed, tmp_path):
    out = run_train(installed, tmp_path, "model=nosuchmodel", "--cfg", "job")
    assert out.returncode != 0
    assert "model" in out.stderr and "nosuchmodel" in out.stderr
