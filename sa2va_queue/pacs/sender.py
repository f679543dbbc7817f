"""Results back to the PACS: build a SEG per finished instance, record it, C-STORE it with retries.

`ResultPump.poll` is called by the listener's background thread every second or so. It does two
things, each from the database, so a restart loses nothing:
1. for the PACS runs it follows, every source instance whose jobs are all final and that has no
   result row yet gets its SEG built, checked (`seg.validate_seg`) and recorded (`dicom_results`);
2. every result row that is due (new, or failed and past its back-off) is sent; the outcome, the
   attempt count and the error are stored. Nothing gives up: failed sends stay `failed` and are
   retried (back-off doubling up to 5 minutes) until the destination takes them.
"""

from __future__ import annotations

import io
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy.orm import Session

from sa2va_queue.core.exceptions import ConfigError, DicomError, NotFound
from sa2va_queue.db import dicom_results
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import FINAL_STATUSES
from sa2va_queue.pacs.results import (
    RunFrames,
    build_instance_seg,
    group_by_instance,
    instance_groups_by_source,
    load_run_frames,
    model_version_label,
    read_source_header,
)

log = logging.getLogger("sa2va_queue.pacs")
_FINAL = {s.value for s in FINAL_STATUSES}


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """`AET@host:port`, e.g. `PACS1@10.0.0.5:104`."""
        aet, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and aet and host and port.isdigit() and 0 < int(port) < 65536 and len(aet) <= 16):
            raise ConfigError(f"--send-to {text!r}: expected AET@host:port (AE title of at most 16 characters), "
                              "e.g. PACS1@10.0.0.5:104")
        return cls(aet, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def c_store(data: bytes, dest: Destination, *, calling_ae: str, timeout_s: float = 30.0,
            ssl_context: ssl.SSLContext | None = None) -> str | None:
    """Send one encoded instance; None on success, else a one-line reason."""
    from pynetdicom import AE

    ds = dcmread(io.BytesIO(data))
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls = (ssl_context, dest.host) if ssl_context is not None else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        return f"association with {dest} {reason}"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if status is None or "Status" not in status:
        return f"no C-STORE response from {dest} (timeout or aborted association)"
    code = int(status.Status)
    if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # success, or warning (stored with coercion)
        return None
    return f"{dest} answered C-STORE status 0x{code:04X}"


class ResultPump:
    def __init__(self, session_factory: Callable[[], Session], blobs: BlobStore, *, dest: Destination | None,
                 calling_ae: str, send: Callable[[bytes, Destination], str | None] | None = None,
                 retry_base_s: float = 5.0, retry_max_s: float = 300.0) -> None:
        self.session_factory, self.blobs, self.dest = session_factory, blobs, dest
        self.send = send or (lambda data, dest: c_store(data, dest, calling_ae=calling_ae))
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self._runs: dict[str, set[str]] = {}  # run name -> sources handled without a SEG (no mask at all)

    def track(self, run_name: str) -> None:
        self._runs.setdefault(run_name, set())

    @property
    def tracked(self) -> list[str]:
        return sorted(self._runs)

    def poll(self, now: datetime | None = None) -> None:
        now = now or datetime.now(timezone.utc)
        for run_name in list(self._runs):
            try:
                if self._build(run_name):
                    del self._runs[run_name]
            except NotFound:
                continue  # the run is not registered yet (enqueue still under way)
        self._send_due(now)

    def _build(self, run_name: str) -> bool:
        """Build the SEGs of finished instances of one run; True when every instance is handled."""
        skipped = self._runs[run_name]
        with self.session_factory() as session:
            run = load_run_frames(session, run_name)
            done = dicom_results.recorded_sources(session, run.id)
            by_source = instance_groups_by_source(run.frames)
            complete = True
            for source, records in sorted(by_source.items()):
                if source in done or source in skipped:
                    continue
                if any(r.status not in _FINAL for r in records):
                    complete = False
                    continue
                instances, _ = group_by_instance(records)
                if not instances:
                    skipped.add(source)
                    log.warning("run %s: instance %s has no segmented frame (all failed); no SEG", run_name, source)
                    continue
                try:
                    self._record(session, run, instances[0])
                except (DicomError, ValueError) as exc:
                    skipped.add(source)
                    log.error("run %s: no SEG for instance %s: %s", run_name, source, exc)
            session.commit()
            return complete

    def _record(self, session: Session, run: RunFrames, instance) -> None:
        source = read_source_header(Path(run.dataset) / instance.source, instance.display_source)
        backend = run.model_version.backend if run.model_version else run.model_spec.split("?")[0].split(":")[0]
        result = build_instance_seg(session, self.blobs, instance, source,
                                    model_version=model_version_label(run.model_version), algorithm_name=backend)
        dicom_results.record(
            session, self.blobs, run_id=run.id, source_key=instance.source, source_sop_uid=result.source_sop_instance_uid,
            study_uid=str(source.StudyInstanceUID), seg_sop_uid=result.sop_instance_uid,
            seg_series_uid=result.series_instance_uid, seg=result.data, model_version_id=run.model_version_id,
            frames={n: rec.job_id for n, rec in instance.frames.items()},
            destination=str(self.dest) if self.dest else None)
        log.info("run %s: SEG built for instance %s (%d frame(s))", run.name, instance.source, len(result.frame_numbers))

    def _send_due(self, now: datetime) -> None:
        if self.dest is None:
            return
        with self.session_factory() as session:
            for row in dicom_results.due(session, now):
                data = self.blobs.get(session, row.seg_sha256)
                try:
                    error = self.send(data, Destination.parse(row.destination or str(self.dest)))
                except (OSError, RuntimeError, ValueError) as exc:  # network stack errors of pynetdicom
                    error = f"C-STORE to {row.destination} failed: {type(exc).__name__}: {exc}"
                if error is None:
                    dicom_results.mark_sent(session, row, now)
                    log.info("SEG %s sent to %s", row.seg_sop_uid, row.destination)
                else:
                    dicom_results.mark_failed(session, row, error, now, base_s=self.retry_base_s, max_s=self.retry_max_s)
                    log.warning("SEG %s not sent (attempt %d, retried later): %s", row.seg_sop_uid, row.attempts, error)
                session.commit()
