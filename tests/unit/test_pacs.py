"""PACS pieces without a network: study grouping, de-identification, the C-STORE handler's checks and
statuses, result delivery bookkeeping, and option parsing."""

from __future__ import annotations

import io
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence

from sa2va_queue.cli.pacs import parse_allow_list
from sa2va_queue.core.exceptions import ConfigError
from sa2va_queue.db import dicom_results
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import Run
from sa2va_queue.db.session import dispose_all, get_sessionmaker, upgrade_schema
from sa2va_queue.pacs.deid import deidentify
from sa2va_queue.pacs.grouping import StudyGrouper
from sa2va_queue.pacs.handlers import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, StoreDeps, store_instance
from sa2va_queue.pacs.sender import Destination
from sa2va_queue.pacs.store import InstanceStore, uid_key
from sa2va_queue.producer.dicom_synth import synth_cine, xa_dataset


def _encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_grouper_waits_for_a_quiet_study() -> None:
    g = StudyGrouper(stable_s=10)
    g.add("a", now=0)
    g.add("b", now=9)
    g.add("a", now=8)  # a new instance restarts the quiet period
    assert g.take_due(now=15) == []
    assert g.take_due(now=18) == ["a"]
    assert g.take_due(now=18) == [] and g.waiting() == 1
    g.put_back("a", now=20)
    assert g.take_due(now=30) == ["b", "a"]


def test_deidentify_keeps_uids_and_drops_identifiers() -> None:
    ds = xa_dataset(synth_cine(1, seed=1, size=16).frames, patient_id="P-12345")
    ds.PatientName, ds.PatientBirthDate, ds.InstitutionName = "Doe^Jane", "19600101", "St Elsewhere"
    ds.OperatorsName = "Tech^Tom"
    other = Dataset()
    other.PersonName = "Nested^Person"
    ds.ReferencedImageSequence = Sequence([other])
    ds.add_new(0x00091001, "LO", "private secret")
    out = deidentify(ds, secret=b"s" * 32)
    text = str(out)
    for leaked in ("Doe^Jane", "P-12345", "19600101", "St Elsewhere", "Tech^Tom", "Nested^Person", "private secret"):
        assert leaked not in text
    assert (out.SOPInstanceUID, out.StudyInstanceUID, out.SeriesInstanceUID) == (
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert out.PatientIdentityRemoved == "YES" and out.PatientBirthDate == ""
    assert {c.CodeValue for c in out.DeidentificationMethodCodeSequence} == {"113100", "113110"}
    # the same patient keeps one pseudonymous id per installation key, another key gives another
    assert out.PatientID == deidentify(ds, secret=b"s" * 32).PatientID != deidentify(ds, secret=b"t" * 32).PatientID
    assert ds.PatientName == "Doe^Jane"  # the received dataset itself is untouched
    np.testing.assert_array_equal(out.pixel_array, ds.pixel_array)


def test_store_instance_statuses_and_deidentified_copy(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    clock = iter(range(100))
    deps = StoreDeps(store, StudyGrouper(1.0), max_frames=3, deid_secret=b"k" * 32, clock=lambda: float(next(clock)))
    frames = synth_cine(4, seed=2, size=32).frames
    good = xa_dataset(frames[:2], seed=2)
    assert store_instance(good, lambda: _encoded(good), deps) == SUCCESS
    saved = dcmread(store.study_dir(uid_key(good.StudyInstanceUID)) / f"{uid_key(good.SOPInstanceUID)}.dcm")
    assert saved.PatientID.startswith("ANON-") and saved.SOPInstanceUID == good.SOPInstanceUID
    assert deps.grouper.waiting() == 1
    too_many = xa_dataset(frames, seed=3)
    assert store_instance(too_many, lambda: _encoded(too_many), deps) == OUT_OF_RESOURCES
    broken = xa_dataset(frames[:2], seed=4)
    broken.PixelData = broken.PixelData[:100]
    assert store_instance(broken, lambda: _encoded(broken), deps) == CANNOT_UNDERSTAND
    no_uid = xa_dataset(frames[:1], seed=5)
    del no_uid.StudyInstanceUID
    assert store_instance(no_uid, lambda: _encoded(no_uid), deps) == CANNOT_UNDERSTAND
    assert len(list(store.studies.rglob("*.dcm"))) == 1 and not list(store.studies.rglob(".incoming-*"))


def test_store_marks_enqueued_instances(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    a = store.write("1.2.3", "1.2.3.4", b"x")
    b = store.write("1.2.3", "1.2.3.5", b"y")
    key = uid_key("1.2.3")
    assert store.pending(key) == sorted([a, b]) and store.studies_with_pending() == [key]
    store.mark_enqueued(key, [a])
    assert store.pending(key) == [b]
    store.mark_enqueued(key, [b])
    assert store.studies_with_pending() == []


def test_result_rows_back_off_and_are_never_dropped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    upgrade_schema(url)
    with get_sessionmaker(url)() as session:
        run = Run(name="pacs-x", model_spec="noop", dataset=str(tmp_path), prompt="p", threshold=0.5)
        session.add(run)
        session.flush()
        row = dicom_results.record(session, BlobStore(), run_id=run.id, source_key="a.dcm", source_sop_uid="1.2",
                                   study_uid="1", seg_sop_uid="9.9", seg_series_uid="9", seg=b"DICM-bytes",
                                   model_version_id=None, frames={1: str(uuid.uuid4())}, destination="P@h:104")
        again = dicom_results.record(session, BlobStore(), run_id=run.id, source_key="a.dcm", source_sop_uid="1.2",
                                     study_uid="1", seg_sop_uid="9.9", seg_series_uid="9", seg=b"DICM-bytes",
                                     model_version_id=None, frames={}, destination="P@h:104")
        assert again.id == row.id  # idempotent on the SEG's UID
        t0 = datetime.now(timezone.utc)  # not a fixed date: the row is created now and must be due by t0 + 1 day
        assert [r.id for r in dicom_results.due(session, t0 + timedelta(days=1))] == [row.id]
        delays = []
        for k in range(8):
            dicom_results.mark_failed(session, row, f"refused {k}", t0, base_s=5, max_s=60)
            delays.append((row.next_attempt_at - t0).total_seconds())
        assert delays == [5, 10, 20, 40, 60, 60, 60, 60] and row.status == "failed" and row.attempts == 8
        session.commit()
        assert dicom_results.due(session, t0 + timedelta(seconds=59)) == []
        assert len(dicom_results.due(session, t0 + timedelta(seconds=61))) == 1
        assert dicom_results.summary(session).failing == [("9.9", 8, "refused 7")]
        dicom_results.mark_sent(session, row, t0)
        session.commit()
        assert dicom_results.summary(session).by_status == {"sent": 1}
        kept = dicom_results.record(session, BlobStore(), run_id=run.id, source_key="b.dcm", source_sop_uid="1.3",
                                    study_uid="1", seg_sop_uid="9.8", seg_series_uid="9", seg=b"other",
                                    model_version_id=None, frames={}, destination=None)
        assert kept.status == "kept" and dicom_results.due(session, t0 + timedelta(days=9)) == []
    dispose_all()


def test_destination_and_allow_list_parsing() -> None:
    assert Destination.parse("PACS1@10.0.0.5:104") == Destination("PACS1", "10.0.0.5", 104)
    assert str(Destination.parse("ORTHANC@[::1]:4242")) == "ORTHANC@[::1]:4242"
    for bad in ("PACS1@host", "host:104", "@h:1", "P@h:0", "WAY_TOO_LONG_AE_TITLE@h:104", "P@h:x"):
        with pytest.raises(ConfigError, match="--send-to"):
            Destination.parse(bad)
    assert parse_allow_list(["PACS1,PACS2", " MOD3 "]) == frozenset({"PACS1", "PACS2", "MOD3"})
    with pytest.raises(ConfigError, match="--allow-aet"):
        parse_allow_list(["A_VERY_LONG_AE_TITLE"])
