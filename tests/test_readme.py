"""Keep the README true: every shell command of its "Quick start" and "What you can run" blocks
runs here, in the order written, and must succeed and leave the outputs the README promises.

How each runs (in this process, so no command pays the interpreter's and torch's start-up):

- ``rankitect-search`` / ``rankitect-train``: composed from ``conf/`` with the command's own
  overrides (``-m`` expanded into its jobs), plus a tiny budget (512/128/128 synthetic rows,
  batch 128, one epoch; one-shot RL: a policy update per 2 samples, DNAS: a curve point per 2
  steps, so that curves.png has points; criteo_stream: 100 hash buckets, no loader workers;
  sampling: one round of 2 trials and one halving rung, a weight-sharing proxy pre-trained on
  256 examples), then run by the function behind the
  console script.
  ``method=automl`` is only composed: even its smallest meaningful budget (pilots, rounds,
  finalists trained fully) is beyond the suite's time. A search's retrains after it are
  switched off (``final=none``; tests/test_finalize.py covers them): these commands check the
  search's own outputs.
- ``rankitect-worker``, ``rankitect-report``, ``rankitect-arch``, ``python -m
  rankitect.space.stats``: their ``main`` with the command's arguments (``--n 200`` for the
  statistics).
- Quick start: ``scripts/setup.sh`` is syntax-checked (``bash -n``), not run (it installs
  packages); ``.venv/bin/python -m pytest`` is this suite itself.

The data are tiny stand-ins of the same formats in a temporary ``RANKITECT_DATA_ROOT``: Frappe
(``frappe_x1/``), Criteo day files (``/data/criteo``) and a CSV of categorical ids
(``/data/mine``); placeholders (``<run>``, ``a.json``, ``b.json``, ``best_arch.json``) are the
runs and architectures the commands before them wrote.
"""

from __future__ import annotations

import itertools
import logging
import re
import shlex
import shutil
import subprocess
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from rankitect.cli.config import conf_dir

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("Quick start", "What you can run")
TINY_SYNTHETIC = ["data.source.n_train=512", "data.source.n_val=128", "data.source.n_test=128"]
TINY = ["data.batch_size=128", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false"]  # fmt: skip
TINY_METHOD = {  # enough steps per policy update and curve point for curves.png to have points
    "OneShotRL": ["method.samples_per_update=2"],
    "DNAS": ["method.curve_every_n_steps=2"],
    "SamplingSearch": ["method.rounds=1", "method.initial_size=2", "method.proxy_budget=256",
                 "method.halving.budgets=[256]", "method.halving.top_k=2",
                 "method.halving.finalists=1", "method.evaluator.batch_size=128"],
}  # fmt: skip
TINY_EVALUATOR = {
    name: ["method.evaluator.pretrain_examples=256"]
    for name in ("WeightSharingProxy", "SiGeoProxy")
}
TINY_DATA = {"StreamingCTRDataModule": ["data.source.hash_buckets=100", "data.num_workers=0"]}
COMPOSE_ONLY = {"AutoMLSearch"}  # methods
SEARCH_OUTPUTS = ("best_arch.json", "results.json", "curves.png")
CONSOLE_SCRIPTS = {
    e.name for e in distribution("rankitect").entry_points if e.group == "console_scripts"
}


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks in `SECTIONS`, comments dropped, ``&&`` split."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for section in SECTIONS:
        block = re.search(rf"^## {section}.*?```bash\n(.*?)```", text, re.S | re.M).group(1)
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(shlex.join(words[:cut]))
                words = words[cut + 1 :]
    return commands


# ---- data stand-ins ---------------------------------------------------------------------------


def write_csv(
    folder: Path,
    header: list[str],
    rows: int,
    rng: np.random.Generator,
    files=("train.csv", "valid.csv", "test.csv"),
    sep: str = ",",
) -> None:
    """Categorical CSV files: ``header[0]`` the 0/1 label, every other column an id."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        lines = [sep.join(header)]
        for _ in range(rows):
            values = [f"v{rng.integers(0, 6)}" for _ in header[1:]]
            lines.append(sep.join([str(int(rng.random() < 0.3)), *values]))
        (folder / name).write_text("\n".join(lines) + "\n")


CRITEO_DAYS = [f"day_{day}" for day in range(24)]


def write_criteo_days(
    folder: Path, rows: int, rng: np.random.Generator, names=CRITEO_DAYS, sep: str = "\t"
) -> None:
    """Criteo rows (label, 13 integers, 26 hashed categoricals); a comma file has a header."""
    folder.mkdir(parents=True, exist_ok=True)
    header = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    for name in names:
        lines = [] if sep == "\t" else [sep.join(header)]
        for _ in range(rows):
            dense = [str(rng.integers(0, 50)) for _ in range(13)]
            sparse = [f"{rng.integers(0, 16):08x}" for _ in range(26)]
            lines.append(sep.join([str(int(rng.random() < 0.3)), *dense, *sparse]))
        (folder / name).write_text("\n".join(lines) + "\n")


# ---- running one command ----------------------------------------------------------------------


def jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """A Hydra command line's jobs: under ``-m`` every ``key=a,b`` override is swept."""
    if not multirun:
        return [overrides]
    choices = [[f"{o.split('=', 1)[0]}={v}" for v in o.split("=", 1)[1].split(",")]
               if "=" in o and "[" not in o else [o] for o in overrides]  # fmt: skip
    return [list(job) for job in itertools.product(*choices)]


def composed(config: str, overrides: list[str]):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(config, overrides=overrides)
        extra = list(TINY)
        if cfg.data.source._target_.endswith("SyntheticCTR"):
            extra += TINY_SYNTHETIC
        extra += TINY_DATA.get(cfg.data._target_.rsplit(".", 1)[-1], [])
        if config == "search":
            extra += TINY_METHOD.get(cfg.method._target_.rsplit(".", 1)[-1], [])
            if "evaluator" in cfg.method:
                extra += TINY_EVALUATOR.get(cfg.method.evaluator._target_.rsplit(".", 1)[-1], [])
            extra.append("final=none")  # the retrains after a search: tests/test_finalize.py
        return compose(config, overrides=[*overrides, *extra])


class Runner:
    """Runs the README's commands in a scratch directory, remembering what they wrote."""

    def __init__(self, cwd: Path) -> None:
        self.cwd, self.counter = cwd, itertools.count()
        self.searches: list[Path] = []  # run directories, in order

    def hydra(self, program: str, args: list[str]) -> None:
        from rankitect.search.run import search
        from rankitect.train import train

        config = program.removeprefix("rankitect-")
        multirun = "-m" in args
        dir_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        dirs = dict(a.split("=", 1) for a in args if a.startswith(("hydra.run.", "hydra.sweep.")))
        overrides = [a for a in args if a != "-m" and a.split("=", 1)[0] not in dirs]
        default = Path("multirun" if multirun else "outputs") / config / str(next(self.counter))
        sweep = Path(dirs.get(dir_key, default))
        for i, job in enumerate(jobs(overrides, multirun)):
            cfg = composed(config, job)
            if self.compose_only(config, cfg):
                continue
            out = sweep / str(i) if multirun else sweep
            out.mkdir(parents=True, exist_ok=True)  # a run dir may be given to resume in
            (search if config == "search" else train)(cfg, out)
            assert (out / "results.json").is_file()
            if config == "search":
                missing = [f for f in SEARCH_OUTPUTS if not (out / f).is_file()]
                assert not missing, f"{out}: {missing} missing"
                self.searches.append(out)

    def compose_only(self, config: str, cfg) -> bool:
        return config == "search" and cfg.method._target_.rsplit(".", 1)[-1] in COMPOSE_ONLY

    def run(self, command: str) -> None:
        words = shlex.split(command)
        program, args = words[0].removeprefix(".venv/bin/"), words[1:]
        if program.startswith("rankitect-"):
            assert program in CONSOLE_SCRIPTS, f"{program} is not an installed console script"
        if program in ("rankitect-search", "rankitect-train"):
            self.hydra(program, args)
        elif program == "rankitect-worker":
            from rankitect.search.sampling.worker import main

            main(args + ["--poll-s", "0.05"])  # the search finished: the worker says so, exits
        elif program == "rankitect-report":
            from rankitect.cli.report import main

            main(args)
            out = Path(args[args.index("-o") + 1] if "-o" in args else args[0])
            assert (out / "pareto.png").is_file()
        elif program == "rankitect-arch":
            from rankitect.cli.arch import main

            assert main(args) == 0
            assert Path(args[args.index("-o") + 1]).is_file()
        elif words[:3] == ["python", "-m", "rankitect.space.stats"]:
            from rankitect.space.stats import main

            n = words.index("--n") + 1
            main([*words[3:n], "200", *words[n + 1 :]])
            assert list(Path("figs").glob("*_stats.png"))
        elif words == ["bash", "scripts/setup.sh"]:
            subprocess.run(["bash", "-n", str(ROOT / "scripts" / "setup.sh")], check=True)
        elif words[:4] == [".venv/bin/python", "-m", "pytest"]:
            pass  # this suite
        else:
            raise AssertionError(f"the README runs {command!r}, which this test does not know")

    def resolve(self, command: str, data: dict[str, Path]) -> str:
        """The command with its placeholders replaced by what ran before it."""
        for placeholder, path in data.items():
            command = command.replace(placeholder, str(path))
        if "<run>" in command:
            command = command.replace("outputs/search/<run>", str(self.searches[0]))
        # two architectures of the default space: the first search's and a sweep job's
        for name, multirun in (("a.json", False), ("b.json", True), ("best_arch.json", False)):
            if f" {name}" in command and not (self.cwd / name).exists():
                run = next(p for p in self.searches if (p.parts[0] == "multirun") == multirun)
                shutil.copy(run / "best_arch.json", self.cwd / name)
        return command


def test_every_readme_command_runs(tmp_path, monkeypatch, caplog):
    commands = readme_commands()
    assert len(commands) > 15 and any(c.startswith("rankitect-search") for c in commands)
    rng = np.random.default_rng(0)
    write_csv(tmp_path / "data" / "frappe_x1", ["label", "user", "item", "daytime"], 200, rng)
    write_csv(tmp_path / "mine", ["label", "user", "item", "city"], 200, rng)
    write_criteo_days(tmp_path / "criteo", 40, rng)
    data = {"/data/mine": tmp_path / "mine", "/data/criteo": tmp_path / "criteo"}
    monkeypatch.setenv("RANKITECT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("RANKITECT_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    caplog.set_level(logging.INFO)
    runner = Runner(work)
    for command in commands:
        try:
            runner.run(runner.resolve(command, data))
        except BaseException as err:
            raise AssertionError(f"README command failed: {command}\n{err!r}") from err
    assert "the search on sqlite:///outputs/trials.db is finished" in caplog.text
    report = (Path("multirun/search") / "report.md").read_text()
    assert "against `dnn`" in report  # the baseline trained by the command before it
