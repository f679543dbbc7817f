"""`status` flags a partial leak (near-perfect frames among honest ones), like the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sa2va_queue.cli.status import collect_status
from sa2va_queue.core.imaging import encode_mask
from sa2va_queue.core.metrics import compute_metrics
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.settings import Settings
from sa2va_queue.db.jobstore import JobStore, NewJob, Outcome
from sa2va_queue.db.models import JobStatus
from tests.helpers import png_bytes

NOOP = ModelSpec.parse("noop")


def _run(store: JobStore, name: str, leaked: int, honest: int) -> None:
    rng = np.random.default_rng(0)
    run = store.open_run(name=name, model_spec=str(NOOP), model_key=NOOP.key, dataset="d", prompt="p", threshold=0.5)
    truths = [rng.random((32, 32)) > 0.8 for _ in range(leaked + honest)]
    jobs = [NewJob(name=f"f{i}.png", image=png_bytes(rng.integers(0, 255, (32, 32), dtype=np.uint8)), width=32,
                   height=32, mode="L", media_type="image/png", gt_mask_png=encode_mask(t)) for i, t in enumerate(truths)]
    reg = store.register(run, jobs, queue="q")
    claim = store.claim(reg.to_send, worker="w", model_key=NOOP.key, max_attempts=3)
    by_name = {f"f{i}.png": t for i, t in enumerate(truths)}
    outcomes = []
    for k, job in enumerate(sorted(claim.jobs, key=lambda j: j.name)):
        truth = by_name[job.name]
        pred = truth.copy() if k < leaked else np.roll(truth, 3, axis=1) | (rng.random(truth.shape) > 0.9)
        outcomes.append(Outcome(job_id=job.id, status=JobStatus.done, mask_png=encode_mask(pred), prob_png=None,
                                text=None, threshold=0.5, batch_size=1, preprocess_ms=0, compute_ms=0,
                                metrics=compute_metrics(pred, truth)))
    store.complete(outcomes, model_version_id=store.model_version_id("noop", {}, None, "t"))


def test_status_flags_a_partial_leak_and_not_an_honest_run(db_url: str, tmp_path: Path) -> None:
    store = JobStore(db_url)
    _run(store, "partial-leak", leaked=6, honest=18)
    _run(store, "honest", leaked=0, honest=24)
    settings = Settings.load(environ={}, data_dir=tmp_path, database_url=db_url)
    runs = {r["run"]: r for r in collect_status(settings)["runs"]}
    assert runs["partial-leak"]["near_perfect"] == 6 and runs["partial-leak"]["scored"] == 24
    assert runs["partial-leak"]["leak_suspected"] is True
    assert runs["honest"]["near_perfect"] == 0 and runs["honest"]["leak_suspected"] is False
