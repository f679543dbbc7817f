"""End to end with a real Orthanc: Orthanc pushes a synthetic XA study to `sa2va-queue pacs listen`
(the console command, with its own private Redis, SQLite and a vesselness worker), the frames are
segmented through the queue, and the SEGs arrive back in Orthanc, checked through its REST API."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread

from sa2va_queue.producer.dicom_synth import write_xa_study
from tests.integration.dicom_peers import free_port, orthanc_binary, wait_until

pytestmark = pytest.mark.slow


def _http(url: str, data: bytes | None = None, method: str | None = None):
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if response.headers.get_content_type() == "application/json" else body


def _up(url: str) -> bool:
    try:
        _http(url)
        return True
    except OSError:
        return False


@pytest.fixture
def orthanc(tmp_path: Path):
    binary = orthanc_binary()
    http_port, dicom_port, listener_port = free_port(), free_port(), free_port()
    config = {
        "Name": "sa2va-test", "StorageDirectory": str(tmp_path / "orthanc-db"), "IndexDirectory": str(tmp_path / "orthanc-db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpBindAddress": "127.0.0.1", "Plugins": [],
        "DicomModalities": {"sa2va": ["SA2VA", "127.0.0.1", listener_port]},
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "wb")
    proc = subprocess.Popen([binary, str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: _up(f"{base}/system"), 30, "Orthanc's REST API", lambda: (tmp_path / "orthanc.log").read_text()[-2000:])
        yield base, dicom_port, listener_port
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_study_from_orthanc_comes_back_segmented(orthanc, tmp_path: Path) -> None:
    base, dicom_port, listener_port = orthanc
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SA2VA_")}
    env["SA2VA_DATA_DIR"] = str(data_dir)
    log = open(tmp_path / "listener.log", "wb")
    listener = subprocess.Popen(
        [sys.executable, "-m", "sa2va_queue.cli", "pacs", "listen", "--ae-title", "SA2VA", "--host", "127.0.0.1",
         "--port", str(listener_port), "--allow-aet", "ORTHANC", "--model", "vesselness",
         "--send-to", f"ORTHANC@127.0.0.1:{dicom_port}", "--stable-seconds", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    listener_log = lambda: (tmp_path / "listener.log").read_text(errors="replace")[-3000:]  # noqa: E731
    try:
        wait_until(lambda: "listening as SA2VA" in listener_log() or listener.poll() is not None, 180,
                   "the listener and its local worker", listener_log)
        assert listener.poll() is None, listener_log()
        # the study: a 3-frame cine and two single-frame instances, uploaded to Orthanc
        files = write_xa_study(tmp_path / "study", 3, seed=31, size=128)
        files += write_xa_study(tmp_path / "study", 2, seed=31, multiframe=False, size=128)
        study_id = None
        for path in files:
            study_id = _http(f"{base}/instances", data=path.read_bytes(), method="POST")["ParentStudy"]
        assert _http(f"{base}/modalities") == ["sa2va"]
        _http(f"{base}/modalities/sa2va/echo", data=b"{}", method="POST")  # C-ECHO; raises unless it succeeds
        _http(f"{base}/modalities/sa2va/store", data=json.dumps([study_id]).encode(), method="POST")

        def seg_series() -> list[dict]:
            series = [_http(f"{base}/series/{s}") for s in _http(f"{base}/studies/{study_id}")["Series"]]
            return [s for s in series if s["MainDicomTags"].get("Modality") == "SEG"]

        wait_until(lambda: sum(len(s["Instances"]) for s in seg_series()) == 3, 240, "three SEGs back in Orthanc",
                   listener_log)
        sources = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}
        for instance in seg_series()[0]["Instances"]:
            seg = dcmread(io.BytesIO(_http(f"{base}/instances/{instance}/file")))
            assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "Blood vessel"
            ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            assert ref in sources
            assert seg.NumberOfFrames == int(dcmread(sources[ref], stop_before_pixels=True).get("NumberOfFrames", 1))
            assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "vesselness"
        # every job carries its DICOM identity (jobs.meta), recorded next to the SEGs that hold its mask
        with sqlite3.connect(data_dir / "sa2va-queue.sqlite") as db:
            metas = [json.loads(m) for (m,) in db.execute("SELECT meta FROM jobs")]
            frames = [json.loads(f) for (f,) in db.execute("SELECT frames FROM dicom_results")]
        assert len(metas) == 5 and {m["sop_uid"] for m in metas} == set(sources)
        assert {m["study_uid"] for m in metas} == {dcmread(files[0], stop_before_pixels=True).StudyInstanceUID}
        assert sorted(len(f) for f in frames) == [1, 1, 3]
        status = subprocess.run([sys.executable, "-m", "sa2va_queue.cli", "pacs", "status"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert "│ sent    │    3 │" in status.stdout, status.stdout + status.stderr
    finally:
        listener.send_signal(signal.SIGTERM)
        try:
            listener.wait(60)
        finally:
            log.close()
    assert listener.returncode == 0, listener_log()
    text = (tmp_path / "listener.log").read_text(errors="replace")
    assert "SYN0001" not in text and "Synthetic" not in text  # no patient data in the logs
    leftovers = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "the private Redis or worker outlived the listener"
