"""The job store's contract, the same tests on SQLite and PostgreSQL (the `db_url` fixture)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from sqlalchemy import event, func, select

from sa2va_queue.core.exceptions import ConfigError, NotFound
from sa2va_queue.core.imaging import encode_mask
from sa2va_queue.core.metrics import compute_metrics
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.jobstore import JobStore, NewJob, Outcome
from sa2va_queue.db.models import DeadLetter, JobStatus, Metrics, Prediction
from tests.helpers import png_bytes

NOOP = ModelSpec.parse("noop")
SATO = ModelSpec.parse("vesselness?method=sato")


def _frames(n: int, *, start: int = 0, size: int = 16, gt: bool = True) -> list[NewJob]:
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        mask = rng.random((size, size)) > 0.7
        out.append(NewJob(name=f"f{i:04d}.png", image=png_bytes(rng.integers(0, 255, (size, size), dtype=np.uint8)),
                          width=size, height=size, mode="L", media_type="image/png",
                          gt_mask_png=encode_mask(mask) if gt else None, gt_source="mask"))
    return out


def _open(store: JobStore, name: str = "r", spec: ModelSpec = NOOP):
    return store.open_run(name=name, model_spec=str(spec), model_key=spec.key, dataset="/data", prompt="p",
                          threshold=0.5)


def _outcome(job, *, status=JobStatus.done) -> Outcome:
    mask = np.zeros((16, 16), bool)
    truth = np.zeros((16, 16), bool) if job.gt_mask_png is None else None
    metrics = compute_metrics(mask, truth) if truth is not None else None
    return Outcome(job_id=job.id, status=status, mask_png=encode_mask(mask), prob_png=None, text=None,
                   threshold=0.5, batch_size=8, preprocess_ms=1.0, compute_ms=2.0, metrics=metrics)


@contextmanager
def count_statements(store: JobStore) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(conn, cursor, statement, params, context, executemany) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", before)


def test_register_skips_names_already_in_the_run_and_stores_failures(db_url: str) -> None:
    store = JobStore(db_url)
    run = _open(store)
    bad = NewJob(name="broken.png", error="broken.png: cannot decode image")
    first = store.register(run, _frames(3) + [bad], queue="q")
    assert len(first.to_send) == 3 and first.failed_at_validation == 1
    again = store.register(run, _frames(4) + [bad], queue="q")
    assert again.skipped_existing == 4 and len(again.to_send) == 1
    assert store.run_counts(run.id) == {"pending": 4, "failed": 1}


def test_open_run_joins_same_version_and_refuses_another(db_url: str) -> None:
    store = JobStore(db_url)
    assert _open(store).created
    assert not _open(store).created
    with pytest.raises(ConfigError, match="exists with model"):
        _open(store, spec=SATO)


def test_concurrent_producers_of_one_run_register_each_frame_once(db_url: str) -> None:
    store = JobStore(db_url)
    sent: list[list[str]] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            run = _open(store, "together")
            sent.append(store.register(run, _frames(20), queue="q").to_send)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=produce) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert sum(len(s) for s in sent) == 20
    assert store.run_counts(store.run("together").id) == {"pending": 20}


def test_claim_and_complete_take_at_most_four_statements_per_job(db_url: str) -> None:
    store = JobStore(db_url)
    run = _open(store)
    reg = store.register(run, _frames(8), queue="q")
    store.mark_sent(reg.to_send)
    version = store.model_version_id("noop", {}, None, "test")
    with count_statements(store) as seen:
        claim = store.claim(reg.to_send, worker="w1", model_key=NOOP.key, max_attempts=3)
        store.complete([_outcome(job) for job in claim.jobs], model_version_id=version)
    assert len(claim.jobs) == 8
    assert len(seen) / 8 <= 4, seen
    assert store.run_counts(run.id) == {"done": 8}


def test_registration_takes_a_handful_of_statements_per_chunk(db_url: str) -> None:
    store = JobStore(db_url)
    run = _open(store)
    with count_statements(store) as seen:
        reg = store.register(run, _frames(64), queue="q")
        store.mark_sent(reg.to_send)
    assert len(seen) <= 6, seen


def test_complete_twice_writes_one_prediction_and_one_metrics_row(db_url: str) -> None:
    store = JobStore(db_url)
    run = _open(store)
    reg = store.register(run, _frames(4), queue="q")
    version = store.model_version_id("noop", {}, None, "test")
    claim = store.claim(reg.to_send, worker="w1", model_key=NOOP.key, max_attempts=3)
    outcomes = []
    for job in claim.jobs:
        truth = np.zeros((16, 16), bool)
        outcomes.append(Outcome(job_id=job.id, status=JobStatus.done, mask_png=encode_mask(truth), prob_png=None,
                                text=None, threshold=0.5, batch_size=4, preprocess_ms=0, compute_ms=0,
                                metrics=compute_metrics(truth, truth)))
    store.complete(outcomes, model_version_id=version)
    store.complete(outcomes, model_version_id=version)  # a redelivered batch
    again = store.claim(reg.to_send, worker="w2", model_key=NOOP.key, max_attempts=3)
    assert sorted(again.final) == sorted(reg.to_send) and not again.jobs
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Prediction)) == 4
        assert conn.scalar(select(func.count()).select_from(Metrics)) == 4


def test_claim_leaves_jobs_of_another_model_version_untouched(db_url: str) -> None:
    store = JobStore(db_url)
    run = _open(store, "sato-run", SATO)
    reg = store.register(run, _frames(2), queue="sa2va.bulk." + SATO.key)
    claim = store.claim(reg.to_send, worker="w1", model_key=ModelSpec.parse("vesselness").key, max_attempts=3)
    assert not claim.jobs and sorted(i for i, _ in claim.foreign) == sorted(reg.to_send)
    assert {q for _, q in claim.foreign} == {"sa2va.bulk." + SATO.key}
    assert store.run_counts(run.id) == {"pending": 2}


def test_attempts_are_counted_by_claims_and_end_in_a_dead_letter(db_url: str) -> None:
    store = JobStore(db_url)
    run = _open(store)
    reg = store.register(run, _frames(1), queue="q")
    for _ in range(2):
        assert store.claim(reg.to_send, worker="w", model_key=NOOP.key, max_attempts=2).jobs
    third = store.claim(reg.to_send, worker="w", model_key=NOOP.key, max_attempts=2)
    assert not third.jobs and "gave up after 2 attempts" in third.failed[reg.to_send[0]]
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(DeadLetter)) == 1
    assert store.requeue_targets(run_name="r", stale_after_s=None, failed=False, dead=True) == [(reg.to_send[0], "q")]
    store.reset(reg.to_send)
    assert store.claim(reg.to_send, worker="w", model_key=NOOP.key, max_attempts=2).jobs[0].attempts == 1


def test_stale_orphaned_and_status_counts(db_url: str) -> None:
    store = JobStore(db_url)
    run = _open(store)
    reg = store.register(run, _frames(3), queue="q")
    store.mark_sent(reg.to_send)
    store.claim(reg.to_send[:2], worker="dead@host", model_key=NOOP.key, max_attempts=3)
    assert store.stale(3600) == []
    assert sorted(store.stale(-1)) == sorted((i, "q") for i in reg.to_send)
    assert store.running_workers() == {"dead@host": 2}
    assert sorted(store.orphaned(["dead@host"])) == sorted((i, "q") for i in reg.to_send[:2])
    [(name, counts)] = store.counts("r", dead_workers=["dead@host"])
    assert counts == {"orphaned": 2, "queued": 1}
    with pytest.raises(NotFound, match="no run named 'nosuchrun'"):
        store.counts("nosuchrun")


def test_a_tampered_blob_fails_its_job_as_corrupted(db_url: str, tmp_path: Path) -> None:
    store = JobStore(db_url, BlobStore(tmp_path / "blobs"))
    run = _open(store)
    reg = store.register(run, _frames(2, gt=False), queue="q")
    victim = sorted((tmp_path / "blobs").rglob("*"))[-1]
    victim.write_bytes(b"tampered")
    claim = store.claim(reg.to_send, worker="w", model_key=NOOP.key, max_attempts=3)
    assert len(claim.jobs) == 1 and "corrupted" in next(iter(claim.failed.values()))
