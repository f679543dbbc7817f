"""The PACS listener against dcmtk: C-ECHO, C-STORE of synthetic XA (single-frame, multi-frame
cine, JPEG lossless from dcmcjpeg), grouping by study, bad input with its DICOM status while the
listener keeps serving, disk full, and the SEG back to a dcmtk storescp.

The enqueue step is injected (a recorder, or an in-process segmenter that stores predictions in
SQLite): these tests are about the DICOM side; test_dicom_e2e.py runs the real queue and Orthanc.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, XRayAngiographicImageStorage

from sa2va_queue.cli.status import collect_status
from sa2va_queue.core.settings import Settings
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.dicom_results import DicomResult
from sa2va_queue.db.session import dispose_all, get_sessionmaker
from sa2va_queue.pacs.listener import Listener, ListenerConfig
from sa2va_queue.pacs.sender import Destination, ResultPump
from sa2va_queue.pacs.store import uid_key
from sa2va_queue.producer.dicom import read_dicom_frames
from sa2va_queue.producer.dicom_synth import study_uids, synth_cine, write_xa_study, xa_dataset
from tests.integration.dicom_peers import InProcessSegmenter, Recorder, dcmtk, free_port, migrate, need, wait_until

AET = "SA2VA"


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    need("echoscu", "storescu", "storescp", "dcmcjpeg", "dcmdump")


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    started: list[Listener] = []

    def _start(enqueue, *, results=None, root: Path | None = None, **options) -> tuple[Listener, int]:
        config = ListenerConfig(ae_title=AET, port=0, host="127.0.0.1", store_root=root or tmp_path / "store",
                                allow_aets=frozenset({"PACS1"}), stable_s=options.pop("stable_s", 0.3),
                                tick_s=0.05, **options)
        listener = Listener(config, enqueue, results)
        port = listener.start()
        started.append(listener)
        return listener, port

    yield _start
    for listener in started:
        listener.stop()


def storescu(port: int, *files: Path, aet: str = "PACS1", propose: str = "-xs") -> subprocess.CompletedProcess:
    """dcmtk storescu; -xs proposes JPEG lossless besides uncompressed, -R only the files' own contexts."""
    return dcmtk("storescu", "-v", propose, "-aet", aet, "-aec", AET, "127.0.0.1", port, *files)


def echoscu(port: int, aet: str = "PACS1") -> subprocess.CompletedProcess:
    return dcmtk("echoscu", "-aet", aet, "-aec", AET, "127.0.0.1", port)


def test_echo_and_the_allow_list(start, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sa2va_queue.pacs")
    _, port = start(Recorder())
    assert echoscu(port).returncode == 0
    refused = echoscu(port, aet="INTRUDER")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
    assert "'INTRUDER' rejected: not on --allow-aet" in caplog.text
    assert echoscu(port).returncode == 0  # still serving


def test_single_multi_frame_and_jpeg_lossless_grouped_by_study(start, tmp_path: Path) -> None:
    singles = write_xa_study(tmp_path / "in/a", 3, seed=11, multiframe=False, size=128)
    (cine,) = write_xa_study(tmp_path / "in/b", 4, seed=12, size=128)
    (plain,) = write_xa_study(tmp_path / "in/c", 3, seed=13, size=128)
    lossless = tmp_path / "in/c_lossless.dcm"
    assert dcmtk("dcmcjpeg", "+e1", plain, lossless).returncode == 0
    assert dcmread(lossless).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    recorder = Recorder()
    listener, port = start(recorder)
    sent = storescu(port, *singles, cine, lossless)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(recorder.calls) == 3, 20, "three studies enqueued", lambda: recorder.calls)
    by_run = {run: (folder, frames) for run, folder, frames in recorder.calls}
    for seed, n_frames in ((11, 3), (12, 4), (13, 3)):
        study_uid, series_uid = study_uids(seed)
        folder, frames = by_run[f"pacs-{uid_key(study_uid)}"]
        assert folder == listener.store.study_dir(uid_key(study_uid))
        assert len(frames) == n_frames and all(f.error is None for f in frames)
        assert {f.meta["study_uid"] for f in frames} == {study_uid}
        assert {f.meta["series_uid"] for f in frames} == {series_uid}
        assert sorted(f.meta["frame"] for f in frames) == ([1, 1, 1] if seed == 11 else list(range(1, n_frames + 1)))
    # JPEG lossless arrives bit-exact: its frames equal the uncompressed original's
    _, frames = by_run[f"pacs-{uid_key(study_uids(13)[0])}"]
    original = read_dicom_frames(plain, plain.parent)
    assert [f.data for f in sorted(frames, key=lambda f: f.name)] == [f.data for f in original]
    # everything enqueued is marked so; a restart finds nothing pending
    assert listener.store.studies_with_pending() == []


def test_frame_selection_and_restart_recovery(start, tmp_path: Path) -> None:
    (cine,) = write_xa_study(tmp_path / "in", 7, seed=14, size=64)
    root = tmp_path / "store"
    # first listener: stores, but its study never becomes stable before it stops (stable_s huge)
    listener, port = start(Recorder(), root=root, stable_s=3600)
    assert storescu(port, cine).returncode == 0
    listener.stop()
    recorder = Recorder()
    start(recorder, root=root, frames="every:3")  # a restart picks the pending study up
    assert recorder.event.wait(20), "pending study not enqueued after restart"
    ((_, _, frames),) = recorder.calls
    assert [f.meta["frame"] for f in frames] == [1, 4, 7]


def test_bad_input_gets_its_status_and_the_listener_keeps_serving(start, tmp_path: Path, caplog) -> None:
    from pynetdicom import AE

    caplog.set_level(logging.INFO, logger="sa2va_queue.pacs")
    frames = synth_cine(2, seed=15, size=64).frames
    short = tmp_path / "short_pixels.dcm"
    ds = xa_dataset(frames, seed=15, instance=1)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(short, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    xa_dataset(frames, seed=15, instance=2).save_as(truncated, enforce_file_format=True)
    truncated.write_bytes(truncated.read_bytes()[:6000])
    huge = tmp_path / "huge.dcm"
    xa_dataset(np.zeros((2500, 8, 8), np.uint8), seed=16).save_as(huge, enforce_file_format=True)
    report = tmp_path / "report.dcm"
    sr = xa_dataset(frames[:1], seed=15, instance=3)
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    sr.save_as(report, enforce_file_format=True)
    good = tmp_path / "good.dcm"
    xa_dataset(frames, seed=15, instance=4).save_as(good, enforce_file_format=True)

    recorder = Recorder()
    _, port = start(recorder)
    out = storescu(port, short)  # pixel data shorter than the header says
    assert "Received Store Response (Error: CannotUnderstand)" in out.stderr
    out = storescu(port, huge)  # 2500 frames > the 2000 limit
    assert "Received Store Response (Refused: OutOfResources)" in out.stderr
    out = storescu(port, report, propose="-R")  # not an image: refused at negotiation
    assert "No Acceptable Presentation Contexts" in out.stderr and out.returncode != 0
    assert "refused at negotiation" in caplog.text and "Basic Text SR" in caplog.text
    # a stream cut mid-element (dcmtk will not send such a file): pynetdicom sends the raw bytes
    ae = AE(ae_title="PACS1")
    ae.add_requested_context(XRayAngiographicImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    status = assoc.send_c_store(truncated)
    assoc.release()
    assert int(status.Status) == 0xC210
    assert "0xC210" in caplog.text and "0xA700" in caplog.text
    # still serving, and only the good instance was kept
    assert echoscu(port).returncode == 0
    assert storescu(port, good).returncode == 0
    assert recorder.event.wait(20)
    ((_, folder, frames_in),) = recorder.calls
    assert len(frames_in) == 2 and len(list(folder.glob("*.dcm"))) == 1
    assert "SYN0001" not in caplog.text and "Synthetic" not in caplog.text  # no patient data in logs


def test_disk_full_is_out_of_resources(start, tmp_path: Path, caplog) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); disk-full path not exercised")
    try:
        caplog.set_level(logging.INFO, logger="sa2va_queue.pacs")
        (cine,) = write_xa_study(tmp_path / "in", 4, seed=17, size=256)  # 256 KiB of pixels: does not fit
        (tiny,) = write_xa_study(tmp_path / "in2", 1, seed=18, size=32)
        recorder = Recorder()
        _, port = start(recorder, root=small / "store")
        out = storescu(port, cine)
        assert "Received Store Response (Refused: OutOfResources)" in out.stderr
        assert "disk full" in caplog.text
        assert not list(small.rglob("*.part")) and not list(small.rglob("*.dcm"))  # nothing half-written
        assert storescu(port, tiny).returncode == 0  # a small instance still fits: still serving
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_seg_is_sent_back_to_storescp(start, tmp_path: Path, db_url: str) -> None:
    url = db_url  # SQLite and PostgreSQL
    scp_dir = tmp_path / "scp"
    scp_dir.mkdir()
    scp_port = free_port()
    scp = subprocess.Popen(["storescp", "-aet", "RESULTS", "-od", str(scp_dir), "+xa", str(scp_port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        dest = Destination.parse(f"RESULTS@127.0.0.1:{scp_port}")
        pump = ResultPump(get_sessionmaker(url), BlobStore(), dest=dest, calling_ae=AET)
        (cine,) = write_xa_study(tmp_path / "in", 3, seed=19, size=128)
        singles = write_xa_study(tmp_path / "in", 2, seed=19, multiframe=False, size=128)
        _, port = start(InProcessSegmenter(url), results=pump)
        assert storescu(port, cine, *singles).returncode == 0
        wait_until(lambda: len(list(scp_dir.iterdir())) == 3, 30, "three SEGs at storescp",
                   lambda: [p.name for p in scp_dir.iterdir()])
        source = dcmread(cine, stop_before_pixels=True)
        segs = [dcmread(p) for p in scp_dir.iterdir()]
        seg = next(s for s in segs if s.NumberOfFrames == 3)
        dump = dcmtk("dcmdump", next(p for p in scp_dir.iterdir() if dcmread(p).SOPInstanceUID == seg.SOPInstanceUID)).stdout
        assert "(0008,0060) CS [SEG]" in dump
        assert source.SOPInstanceUID in dump and "ReferencedFrameNumber" in dump and "ReferencedSeriesSequence" in dump
        assert seg.StudyInstanceUID == source.StudyInstanceUID

        def statuses() -> list[str]:
            with get_sessionmaker(url)() as session:
                return sorted(r.status for r in session.query(DicomResult).all())

        # storescp has the file before the sender records the C-STORE response
        wait_until(lambda: statuses() == ["sent"] * 3, 30, "three SEGs recorded as sent", statuses)
        with get_sessionmaker(url)() as session:
            rows = session.query(DicomResult).all()
            assert {r.seg_sop_uid for r in rows} == {s.SOPInstanceUID for s in segs}
            assert all(len(r.frames) in (1, 3) for r in rows)
    finally:
        scp.terminate()
        scp.wait(10)
        dispose_all()


def test_failed_send_is_recorded_and_retried(tmp_path: Path, start, db_url: str) -> None:
    url = db_url  # SQLite and PostgreSQL
    scp_port = free_port()  # nothing listens here yet
    dest = Destination.parse(f"RESULTS@127.0.0.1:{scp_port}")
    pump = ResultPump(get_sessionmaker(url), BlobStore(), dest=dest, calling_ae=AET, retry_base_s=0.2, retry_max_s=0.5)
    (cine,) = write_xa_study(tmp_path / "in", 2, seed=20, size=64)
    _, port = start(InProcessSegmenter(url), results=pump)
    assert storescu(port, cine).returncode == 0

    def row() -> DicomResult | None:
        with get_sessionmaker(url)() as session:
            return session.query(DicomResult).one_or_none()

    wait_until(lambda: (r := row()) is not None and r.attempts >= 2, 30, "two failed attempts")
    failed = row()
    assert failed.status == "failed" and "association" in (failed.last_error or "")
    shown = collect_status(Settings.load(environ={}, data_dir=tmp_path / "data", database_url=url))["dicom_results"]
    assert shown["by_status"] == {"failed": 1} and shown["failing"][0]["seg_sop_uid"] == failed.seg_sop_uid
    scp_dir = tmp_path / "scp"
    scp_dir.mkdir()
    scp = subprocess.Popen(["storescp", "-aet", "RESULTS", "-od", str(scp_dir), "+xa", str(scp_port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: row().status == "sent", 30, "the retried send", lambda: vars(row()))
        assert len(list(scp_dir.iterdir())) == 1
    finally:
        scp.terminate()
        scp.wait(10)
        dispose_all()


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    made = dcmtk("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                 "-days", "1", "-subj", f"/CN={name}")
    assert made.returncode == 0, made.stderr
    return key, cert


def test_tls_with_client_certificates(start, tmp_path: Path) -> None:
    need("openssl")
    server_key, server_cert = _self_signed(tmp_path, "listener")
    client_key, client_cert = _self_signed(tmp_path, "pacs")
    stranger_key, stranger_cert = _self_signed(tmp_path, "stranger")
    _, port = start(Recorder(), tls_cert=server_cert, tls_key=server_key, tls_ca=client_cert)

    def echo(*tls: object) -> subprocess.CompletedProcess:
        return dcmtk("echoscu", *tls, "-aet", "PACS1", "-aec", AET, "127.0.0.1", port, timeout=30)

    assert echo("+tls", client_key, client_cert, "+cf", server_cert).returncode == 0
    assert echo("+tls", stranger_key, stranger_cert, "+cf", server_cert).returncode != 0  # unknown client
    assert echo("-to", "5", "-ta", "5").returncode != 0  # plain TCP to the TLS port
    assert echo("+tls", client_key, client_cert, "+cf", server_cert).returncode == 0  # still serving


def test_a_hanging_destination_does_not_hold_up_new_studies(start, tmp_path: Path) -> None:
    import threading

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    sending, release = threading.Event(), threading.Event()

    def hanging_send(data: bytes, dest: Destination) -> str | None:  # a PACS that accepts and never answers
        sending.set()
        release.wait(60)
        return "no answer"

    pump = ResultPump(get_sessionmaker(url), BlobStore(), dest=Destination("P", "127.0.0.1", 9), calling_ae=AET,
                      send=hanging_send)
    segmenter = InProcessSegmenter(url)
    _, port = start(segmenter, results=pump)
    (first,) = write_xa_study(tmp_path / "a", 2, seed=21, size=64)
    (second,) = write_xa_study(tmp_path / "b", 2, seed=22, size=64)
    try:
        assert storescu(port, first).returncode == 0
        assert sending.wait(30), "the first SEG was never sent"
        assert storescu(port, second).returncode == 0
        wait_until(lambda: len(segmenter.calls) == 2, 20, "the second study enqueued while a send hangs")
    finally:
        release.set()
    dispose_all()
