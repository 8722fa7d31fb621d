"""Keep docs/ true (issue 17): every how-to block of docs/*.md runs here, as the README's commands
do in tests/test_readme.py, and must succeed and leave the outputs it names.

Which blocks run:

- Every fenced block tagged ``bash`` is a how-to block and runs, whole, in ``bash -euo
  pipefail`` (its variables, loops and ``$(...)`` as written), unless the line right before its
  fence is ``<!-- not-run: REASON -->``: benchmark scripts and multi-hour studies (their numbers
  are the doc's; they are not how-to), commands that need a PostgreSQL server, a shared file
  system or an earlier run the suite cannot afford.
- A block whose last line is a comment documents what the command before it prints: the
  block's output must end with that line.
- A block holding a command must be tagged ``bash``; output, config and Python blocks carry
  another tag or none; a usage synopsis (``[--option]``) is ``text``
  (``test_every_doc_is_listed_and_command_blocks_are_tagged_bash``).

How a block runs: ``rankitect-*`` and ``python -m rankitect...`` are shell functions that hand
their arguments to this process, which runs them as tests/test_readme.py's ``Runner`` does
(tiny budgets appended, searches with ``final=none``, ``method=automl`` only composed) and
answers with the exit status; other programs (``python -c``) run as written. Multi-process
commands (``trainer=ddp`` / ``ddp_spawn``) are composed only: each costs ~30 s of process
start-ups, and tests/test_distributed_e2e.py runs the same shapes as subprocesses. A sampling
search evaluates its trials in its own process (``method.workers=0``; tests/test_readme.py runs
the worker processes). A trailing ``...`` ("your other overrides") is dropped.

Placeholders: ``/path/to/frappe_x1`` is a Frappe stand-in (also ``$RANKITECT_DATA_ROOT``);
``/data/criteo*`` a folder of Criteo stand-in files under the names the docs use;
``../shared/data/criteo_sample`` a stand-in of that 200-row comma-separated sample;
``/data/mine`` a CSV stand-in written, per command, in the format the command configures
(label column, file names, separator); ``<run dir>``, ``path/best_arch.json``, ``a.json``,
``best_arch.json``, ``run_dir/``, ``b/results.json`` and ``multirun/search/<date>/<time>`` are
runs and architectures of the commands before them. Docs run in ``ORDER``, so that a doc's
examples find the runs they read.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from test_readme import (
    CONSOLE_SCRIPTS,
    CRITEO_DAYS,
    Runner,
    composed,
    jobs,
    write_criteo_days,
    write_csv,
)

ROOT = Path(__file__).resolve().parents[1]
# search before training and report (they read its runs); every doc is listed (tested)
ORDER = ("data", "search", "training", "sampling", "distributed", "space", "report", "automl",
         "system", "models", "robustness", "benchmarks")  # fmt: skip
FENCE = re.compile(r"```(\S*)\s*")
NOT_RUN = re.compile(r"<!-- not-run: (\S.*) -->")
MULTI_PROCESS = {"ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp"}
PROGRAMS = {*CONSOLE_SCRIPTS, "python", ".venv/bin/python", "bash", "export", "for"}
FRAPPE = ["label", "user", "item", "daytime", "weekday", "isweekend", "homework", "cost",
          "weather", "country", "city"]  # fmt: skip
CRITEO_NAMES = ["train_part_0", "train_part_1", "valid.txt", "test.txt"]


@dataclasses.dataclass
class Block:
    doc: str
    line: int
    tag: str
    text: str
    not_run: str | None  # the marker's reason

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"


def doc_blocks() -> list[Block]:
    blocks = []
    for name in ORDER:
        lines = (ROOT / "docs" / f"{name}.md").read_text().splitlines()
        i = 0
        while i < len(lines):
            if fence := FENCE.fullmatch(lines[i]):
                end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
                marker = NOT_RUN.fullmatch(lines[i - 1].strip()) if i else None
                text = "\n".join(lines[i + 1 : end]) + "\n"
                blocks.append(Block(f"{name}.md", i + 1, fence.group(1), text,
                                    marker and marker.group(1)))  # fmt: skip
                i = end
            i += 1
    return blocks


def holds_command(text: str) -> bool:
    """Whether a block's first line runs a program (after ``NAME=value`` assignments); a usage
    synopsis (``[--option]``) does not."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if " [-" in first:
        return False
    words = first.split()
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)
    return bool(words) and words[0] in PROGRAMS


def test_every_doc_is_listed_and_command_blocks_are_tagged_bash():
    assert sorted(ORDER) == sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    blocks = doc_blocks()
    untagged = [b.where for b in blocks if b.tag != "bash" and holds_command(b.text)]
    assert not untagged, f"blocks holding a command must be tagged bash: {untagged}"
    stray = [b.where for b in blocks if b.tag != "bash" and b.not_run]
    assert not stray, f"a not-run marker belongs before a bash block: {stray}"
    runs = [b for b in blocks if b.tag == "bash" and not b.not_run]
    assert {b.doc for b in runs} >= {"search.md", "training.md", "data.md", "report.md"}


# ---- running a block ---------------------------------------------------------------------------

# `rankitect-*` and `python -m rankitect...` hand their words (NUL-separated) to the test
# process through one FIFO and wait for the exit status on another.
PRELUDE = "\n".join(
    [
        '_rk() { printf "%s\\0" "$@" > "$RK_REQ"; local rc; read -r rc < "$RK_REP"; '
        'return "$rc"; }',
        *(f'{name}() {{ _rk {name} "$@"; }}' for name in sorted(CONSOLE_SCRIPTS)),
        'python() { if [ "${1-}" = -m ] && [[ "${2-}" == rankitect* ]]; then _rk python "$@"; '
        'else command python "$@"; fi; }',
        'trap \'printf "%s\\0" __exit__ "$?" > "$RK_REQ"\' EXIT',
        "",
    ]
)


def first_job(config: str, args: list[str]):
    """The composed config of a command line's first job (tiny budgets included)."""
    overrides = [a for a in args if a != "-m" and not a.startswith("hydra.")]
    return composed(config, jobs(overrides, "-m" in args)[0])


class DocRunner(Runner):
    def __init__(self, cwd: Path, standins: Path) -> None:
        super().__init__(cwd)
        self.standins, self.rng = standins, np.random.default_rng(1)
        self.default_searches: list[Path] = []  # default data and space: the archs to reuse

    def compose_only(self, config: str, cfg) -> bool:
        return super().compose_only(config, cfg) or cfg.trainer.get("strategy") in MULTI_PROCESS

    def hydra(self, program: str, args: list[str]) -> None:
        config = program.removeprefix("rankitect-")
        if "--cfg" in args:  # Hydra prints the composed config (`--cfg job`) and runs nothing
            i = args.index("--cfg")
            print(OmegaConf.to_yaml(composed(config, args[:i] + args[i + 2 :])))
            return
        if any("/data/mine" in a for a in args):
            root = self.standins / f"mine{next(self.counter)}"
            args = [a.replace("/data/mine", str(root)) for a in args]
            source = first_job(config, args).data.source
            sep = "\t" if source.sep == "\\t" else source.sep  # the reader's rule: "\t" is a tab
            write_csv(root, [source.label, "user", "item", "city"], 200, self.rng,
                      (source.train, source.val, source.test), sep)  # fmt: skip
        if first_job(config, args).get("method", {}).get("workers"):
            args = [*args, "method.workers=0"]  # trials in this process: see the docstring
        before = len(self.searches)
        super().hydra(program, args)
        if not any(a.startswith(("data=", "search_space=", "experiment=")) for a in args):
            self.default_searches += self.searches[before:]

    def placeholders(self) -> dict[str, tuple[str, object]]:
        """Token -> (pattern, its value): a bare name or path, not part of a longer path."""
        first, last = (lambda: self.default_searches[0]), (lambda: self.default_searches[-1])
        return {
            "@@run-dir@@": ("<run dir>", last),
            "@@arch@@": (
                "path/best_arch.json|a.json|best_arch.json",
                lambda: first() / "best_arch.json",
            ),
            "@@run_dir@@": ("run_dir(?=/)", last),
            "@@results@@": ("b/results.json", lambda: first() / "results.json"),
            "@@sweep@@": (r"multirun/search/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", self.last_sweep),
        }

    def last_sweep(self) -> Path:
        return next(p.parent for p in reversed(self.searches) if p.parts[0] == "multirun")

    def tokenize(self, text: str) -> str:
        """The block with its placeholders as tokens (shell-safe), resolved when a command
        runs, from the runs before it."""
        for token, (pattern, _) in self.placeholders().items():
            text = re.sub(rf"(?<![\w/.$])(?:{pattern})", token, text)
        return text

    def run(self, command: str) -> None:
        for token, (_, value) in self.placeholders().items():
            if token in command:
                command = command.replace(token, str(value()))
        super().run(shlex.join(w for w in shlex.split(command) if w != "..."))


def standins(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    write_csv(folder / "data" / "frappe_x1", FRAPPE, 200, rng)
    write_criteo_days(folder / "criteo", 40, rng, names=[*CRITEO_DAYS, *CRITEO_NAMES])
    write_criteo_days(folder / "criteo_sample", 200, rng, names=["criteo_sample.csv"], sep=",")
    return {
        "/path/to/frappe_x1": folder / "data" / "frappe_x1",
        "/data/criteo_terabyte": folder / "criteo",
        "/data/criteo": folder / "criteo",
        "../shared/data/criteo_sample": folder / "criteo_sample",
    }


def run_block(runner: DocRunner, block: Block, data: dict[str, Path], env: dict) -> str | None:
    """Runs a block in bash, serving its rankitect commands here; the failure, or None."""
    text = runner.tokenize(block.text)
    for placeholder, path in data.items():
        text = re.sub(rf"{re.escape(placeholder)}\b", str(path), text)
    req, rep = runner.standins / "req", runner.standins / "rep"
    for fifo in (req, rep):
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    log = runner.standins / "bash.log"
    with log.open("w") as out:
        bash = subprocess.Popen(["bash", "-euo", "pipefail", "-c", PRELUDE + text],
                                env={**env, "RK_REQ": str(req), "RK_REP": str(rep)},
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    failure = None
    while True:
        words = req.read_bytes().decode().split("\0")[:-1]
        if words[0] == "__exit__":
            status = int(words[1])
            break
        command = shlex.join(words)
        try:
            runner.run(command)
            rc = 0
        except (Exception, SystemExit) as err:  # reported with the command, below
            failure, rc = f"{command}\n{err!r}", 1
        rep.write_text(f"{rc}\n")
    bash.wait(timeout=60)
    if failure or status:
        return failure or f"bash exited {status}:\n{log.read_text()[-2000:]}"
    last = block.text.rstrip().splitlines()[-1]
    printed = log.read_text().rstrip().splitlines()
    if last.startswith("# ") and printed[-1:] != [last[2:]]:
        return f"printed {printed[-1:]}, the block's last line documents {last[2:]!r}"
    return None


@pytest.mark.slow
def test_every_doc_how_to_block_runs(tmp_path, monkeypatch):
    blocks = [b for b in doc_blocks() if b.tag == "bash" and not b.not_run]
    scratch, work = tmp_path / "standins", tmp_path / "work"
    scratch.mkdir()
    work.mkdir()
    data = standins(scratch)
    monkeypatch.setenv("RANKITECT_DATA_ROOT", str(scratch / "data"))
    monkeypatch.setenv("RANKITECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.chdir(work)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    runner = DocRunner(work, scratch)
    failures = [f"{b.where}: {failure}" for b in blocks
                if (failure := run_block(runner, b, data, env))]  # fmt: skip
    assert not failures, "doc blocks failed:\n" + "\n\n".join(failures)


def test_a_failing_command_a_failing_shell_line_and_a_wrong_output_are_reported(tmp_path):
    runner, env = DocRunner(tmp_path, tmp_path), dict(os.environ)

    def block(text: str) -> Block:
        return Block("x.md", 1, "bash", text, None)

    failure = run_block(runner, block("rankitect-train model=no_such_model\necho on\n"), {}, env)
    assert "rankitect-train model=no_such_model" in failure and "no_such_model" in failure
    assert "on" not in (tmp_path / "bash.log").read_text()  # the block stops at the failure
    assert run_block(runner, block("false\n"), {}, env).startswith("bash exited 1")
    assert "documents '3'" in run_block(runner, block("echo 2\n# 3\n"), {}, env)
    assert run_block(runner, block("echo 3\n# 3\n"), {}, env) is None
