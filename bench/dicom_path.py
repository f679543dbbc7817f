"""Costs of the DICOM path on synthetic XA cines, printed as JSON.

- reader: decode + window + PNG-encode per frame (`producer.dicom.read_dicom_frames`), uncompressed
  and JPEG lossless (dcmcjpeg), 512x512;
- listener: C-STORE of whole cines with dcmtk storescu to the listener (validation of every frame,
  atomic write, fsync), seconds per instance as storescu sees them, enqueue step a no-op;
- SEG: build + pydicom/highdicom read-back per instance.

    python bench/dicom_path.py --frames 30 --instances 4
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread

from sa2va_queue.pacs.listener import Listener, ListenerConfig
from sa2va_queue.pacs.seg import build_seg, to_bytes, validate_seg
from sa2va_queue.producer.dicom import read_dicom_frames
from sa2va_queue.producer.dicom_synth import synth_cine, write_xa_study


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--instances", type=int, default=4)
    args = parser.parse_args()
    out: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "frames": args.frames,
                 "size": 512}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cines = [write_xa_study(root / f"s{i}", args.frames, seed=100 + i)[0] for i in range(args.instances)]
        t = time.perf_counter()
        frames = read_dicom_frames(cines[0], root)
        out["reader_ms_per_frame_uncompressed"] = round(1000 * (time.perf_counter() - t) / len(frames), 2)
        if shutil.which("dcmcjpeg"):
            lossless = root / "lossless.dcm"
            subprocess.run(["dcmcjpeg", "+e1", str(cines[0]), str(lossless)], check=True, capture_output=True)
            t = time.perf_counter()
            read_dicom_frames(lossless, root)
            out["reader_ms_per_frame_jpeg_lossless"] = round(1000 * (time.perf_counter() - t) / args.frames, 2)
            out["jpeg_lossless_ratio"] = round(cines[0].stat().st_size / lossless.stat().st_size, 2)
        if shutil.which("storescu"):
            listener = Listener(ListenerConfig("SA2VA", 0, root / "store", frozenset({"BENCH"}), host="127.0.0.1",
                                               stable_s=3600), lambda *a: None)
            port = listener.start()
            t = time.perf_counter()
            subprocess.run(["storescu", "-aet", "BENCH", "-aec", "SA2VA", "127.0.0.1", str(port), *map(str, cines)],
                           check=True, capture_output=True)
            elapsed = time.perf_counter() - t
            listener.stop()
            out["cstore_s_per_instance"] = round(elapsed / args.instances, 3)
            out["cstore_frames_per_s"] = round(args.instances * args.frames / elapsed, 1)
        masks = synth_cine(args.frames, seed=100).masks
        source = dcmread(cines[0], stop_before_pixels=True)
        t = time.perf_counter()
        data = to_bytes(build_seg(source, {k + 1: m for k, m in enumerate(masks)}, model_version="bench",
                                  algorithm_name="bench"))
        out["seg_build_ms"] = round(1000 * (time.perf_counter() - t), 1)
        t = time.perf_counter()
        validate_seg(data, source, {k + 1: m for k, m in enumerate(masks)})
        out["seg_validate_ms"] = round(1000 * (time.perf_counter() - t), 1)
        out["seg_bytes"] = len(data)
        out["vessel_fraction"] = round(float(np.mean(masks)), 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
