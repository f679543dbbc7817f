"""`requeue`: stale, failed and dead-lettered jobs are found in SQL and sent again."""

from __future__ import annotations

import json
import time

import numpy as np
import redis
from sqlalchemy import select

from sa2va_queue.core.broker import make_celery, publish, queue_names
from sa2va_queue.core.imaging import encode_mask
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.jobstore import JobStore, Outcome
from sa2va_queue.db.models import DeadLetter, Job, JobStatus
from sa2va_queue.db.session import session_scope
from sa2va_queue.producer.enqueue import open_run, to_new_job
from sa2va_queue.worker.janitor import RESERVATION_MAX_AGE_S, UNACKED, UNACKED_INDEX, resend, sweep
from tests.integration.test_faults import frames

NOOP = ModelSpec.parse("noop")


def test_dead_failed_and_stale_jobs_are_resent_once_each(settings):
    _, queue = queue_names(NOOP)
    store = JobStore(settings.sqlalchemy_url, BlobStore())
    run = open_run(store, name="rq", spec=NOOP, dataset="d", prompt="p")
    ids = store.register(run, [to_new_job(f) for f in frames(4)], queue=queue).to_send
    dead, failed, stale, done = ids
    store.dead_letter({dead: "gave up after 3 attempts"})
    store.fail({failed: "bad luck"})
    empty = encode_mask(np.zeros((32, 32), bool))
    store.complete([Outcome(job_id=done, status=JobStatus.done, mask_png=empty, prob_png=None, text=None,
                            threshold=0.5, batch_size=1, preprocess_ms=0.0, compute_ms=0.0, metrics=None)],
                   model_version_id=store.model_version_id("noop", {}, None, "test"))
    # `stale` stays pending: never sent
    only_dead = store.requeue_targets(run_name="rq", stale_after_s=None, failed=False, dead=True)
    everything = store.requeue_targets(run_name=None, stale_after_s=0, failed=True, dead=True)
    assert only_dead == [(dead, queue)]
    assert sorted(j for j, _ in everything) == sorted([dead, failed, stale])

    app = make_celery(settings)
    try:
        assert resend(store, app, everything) == 3
    finally:
        app.close()
    assert redis.Redis.from_url(settings.broker_url).llen(queue) == 3
    with session_scope(settings.sqlalchemy_url) as session:
        status = {j.id: j.status for j in session.scalars(select(Job))}
        assert status == {dead: JobStatus.queued, failed: JobStatus.queued, stale: JobStatus.queued,
                          done: JobStatus.done}
        assert session.scalars(select(DeadLetter.requeued_at)).one() is not None
    assert store.requeue_targets(run_name=None, stale_after_s=None, failed=False, dead=True) == []  # once


def test_a_reservation_no_worker_claimed_is_resent_a_fresh_one_is_left_alone(settings):
    """A worker killed between reserving a message and claiming its job: with an hour's visibility
    timeout Redis would hold the message that long. The sweep drops a reservation older than
    RESERVATION_MAX_AGE_S of a still-queued job and sends the job again."""
    urgent, queue = queue_names(NOOP)
    store = JobStore(settings.sqlalchemy_url, BlobStore())
    run = open_run(store, name="reserved", spec=NOOP, dataset="d", prompt="p")
    abandoned, fresh = store.register(run, [to_new_job(f) for f in frames(2)], queue=queue).to_send
    store.mark_sent([abandoned, fresh])
    client = redis.Redis.from_url(settings.broker_url)
    app = make_celery(settings)
    try:
        for job_id, age in ((abandoned, RESERVATION_MAX_AGE_S + 30), (fresh, 1.0)):
            publish(app, [job_id], queue)
            raw = json.loads(client.rpop(queue))  # what kombu's Redis QoS does on reserving
            client.hset(UNACKED, job_id + "-tag", json.dumps([raw, "", queue]))
            client.zadd(UNACKED_INDEX, {job_id + "-tag": time.time() - age})
        assert sweep(store, client, app, [urgent, queue], grace_s=0) == 1
    finally:
        app.close()
    (message,) = client.lrange(queue, 0, -1)
    assert json.loads(message)["headers"]["id"] == abandoned
    assert client.hkeys(UNACKED) == [(fresh + "-tag").encode()]
    assert client.zrange(UNACKED_INDEX, 0, -1) == [(fresh + "-tag").encode()]
    assert store.run_counts(run.id) == {"queued": 2}
