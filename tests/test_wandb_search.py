"""A search with ``logger=wandb`` (offline) leaves in its wandb run the found architecture and
``results.json`` as an artifact and the final comparison in the run's summary, read back from
the offline run's own transaction log (``run-<id>.wandb``, what ``wandb sync`` uploads)."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from wandb.proto import wandb_internal_pb2

from rankitect.cli.config import conf_dir
from rankitect.search.finalize import final_comparison
from rankitect.search.run import search

TINY = [
    "logger=wandb",
    "search_space=generic",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.source.n_train=512",
    "data.source.n_val=128",
    "data.source.n_test=128",
]
# a Lightning fit (DNAS) with the smallest final: one finalist retrained for one epoch, one
# baseline; and a method that runs itself (sampling), search only
DNAS = [
    "method=dnas",
    "method.target_flops=3000",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "data.batch_size=128",
    "final.finalists=1",
    "final.max_epochs=1",
    "final.baselines=[lr]",
    "final.export=false",
]
SAMPLING = [
    "method=sampling",
    "final=none",
    "method.workers=0",
    "method.rounds=1",
    "method.initial_size=2",
    "method.round_size=1",
    "method.proxy_budget=256",
    "method.evaluator.batch_size=128",
    "method.predictor.ensemble=1",
    "method.predictor.epochs=5",
    "method.sampler.steps=2",
    "method.sampler.batch=4",
    "method.halving.top_k=2",
    "method.halving.budgets=[256]",
    "method.halving.finalists=1",
]
COMPARED = {
    *(f"{who}/{k}" for who in ("final", "baseline/lr") for k in
      ("test_auc", "test_logloss", "test_ne", "flops")),
    "baseline/lr/ne_gain_pct",
    "baseline/lr/flops_ratio",
}  # fmt: skip


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a run's ``.wandb`` file: a 7-byte W&B header, then LevelDB's log format
    (32 KiB blocks of chunks, each a 7-byte header: CRC, length, type full/first/middle/last).
    A chunk not yet written whole (the file is still being written) ends the list."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, block, record = [], 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break
        record += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            records.append(wandb_internal_pb2.Record())
            records[-1].ParseFromString(record)
            record = b""
    return records


def finished_run_records(path: Path, timeout_s: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """The records of a finished run: wandb's service writes the file in the background and
    may still be flushing it when ``finish()`` returns, so wait for the run's exit record."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = wandb_records(path)
        if any(r.HasField("exit") for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.mark.parametrize(("method", "compared"), [(DNAS, COMPARED), (SAMPLING, set())])
def test_search_logs_the_architecture_artifact_and_the_final_comparison(
    tmp_path, monkeypatch, method, compared
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # artifact staging
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=[*TINY, *method])
    results = search(cfg, out)

    # the logger writes under the run directory (its save_dir)
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = finished_run_records(run_file)
    assert any(r.HasField("exit") for r in records), "the run never finished"
    run_id = next(r.run.run_id for r in records if r.HasField("run"))
    (artifact,) = [r.artifact for r in records if r.HasField("artifact")]
    assert (artifact.type, artifact.name) == ("architecture", f"arch-{run_id}")
    contents = {c.path: c for c in artifact.manifest.contents}
    assert sorted(contents) == ["best_arch.json", "results.json"]
    for name, entry in contents.items():
        data = (out / name).read_bytes()  # the files as the search left them
        assert entry.digest == base64.b64encode(hashlib.md5(data).digest()).decode()
        assert Path(entry.local_path).read_bytes() == data  # the staged copy

    summary = {}
    for r in records:
        if r.HasField("summary"):
            for item in r.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    comparison = final_comparison(json.loads((out / "results.json").read_text()))
    assert set(comparison) == compared
    assert {k: summary[k] for k in comparison} == comparison
    assert json.loads(artifact.metadata or "{}") == comparison
    if compared:
        assert comparison["final/test_ne"] == results["final"]["test"]["ne"]
        assert comparison["baseline/lr/flops"] == results["baselines"]["lr"]["flops"]
        b = results["baselines"]["lr"]
        gain = 100 * (b["test"]["ne"] - results["final"]["test"]["ne"]) / b["test"]["ne"]
        assert comparison["baseline/lr/ne_gain_pct"] == pytest.approx(gain)
    # finish_logger's part: the architecture and its FLOPs
    assert summary["arch"] == results["arch"] and summary["flops"] == results["flops"]
