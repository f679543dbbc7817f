"""`requeue`: stale, failed and dead-lettered jobs are found in SQL and sent again."""

from __future__ import annotations

import redis
from sqlalchemy import select

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import DeadLetter, Job, JobStatus
from sa2va_queue.db.session import get_sessionmaker, session_scope
from sa2va_queue.producer import enqueue
from tests.integration.test_faults import frames
from sa2va_queue.worker import jobs
from sa2va_queue.core.broker import make_celery, queue_names


def test_dead_failed_and_stale_jobs_are_resent_once_each(settings):
    _, queue = queue_names("noop")
    with session_scope(settings.sqlalchemy_url) as session:
        run = enqueue.get_or_create_run(session, name="rq", model_spec="noop", dataset="d", prompt="p",
                                        threshold=0.5, split=None)
        ids = enqueue.register_frames(session, BlobStore(), run, frames(4), queue=queue, prompt="p").new_job_ids
    dead, failed, stale, done = ids
    with session_scope(settings.sqlalchemy_url) as session:
        jobs.dead_letter(session, dead, "gave up after 3 attempts")
        jobs.finish(session, failed, JobStatus.failed, "bad luck")
        jobs.finish(session, done, JobStatus.done)
    with session_scope(settings.sqlalchemy_url) as session:  # `stale` stays pending: never sent
        only_dead = enqueue.jobs_to_requeue(session, run_name="rq", stale_after_s=None, failed=False, dead=True)
        everything = enqueue.jobs_to_requeue(session, run_name=None, stale_after_s=0, failed=True, dead=True)
    assert [j for j, _ in only_dead] == [dead]
    assert sorted(j for j, _ in everything) == sorted([dead, failed, stale])

    app = make_celery(settings)
    try:
        assert enqueue.resend(app, get_sessionmaker(settings.sqlalchemy_url), everything) == 3
    finally:
        app.close()
    assert redis.Redis.from_url(settings.broker_url).llen(queue) == 3
    with session_scope(settings.sqlalchemy_url) as session:
        status = {j.id: j.status for j in session.scalars(select(Job))}
        assert status == {dead: JobStatus.queued, failed: JobStatus.queued, stale: JobStatus.queued,
                          done: JobStatus.done}
        assert session.scalars(select(DeadLetter.requeued_at)).one() is not None
        again = enqueue.jobs_to_requeue(session, run_name=None, stale_after_s=None, failed=False, dead=True)
    assert again == []  # a dead letter is re-sent once

