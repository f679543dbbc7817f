"""Synthetic X-ray angiography as DICOM, for tests, demos and benchmarks (never for claims).

The frames are those of `producer.synth` (one vessel tree moving over a cine), written as X-Ray
Angiographic Image Storage instances: one multi-frame cine instance, or one single-frame instance
per frame. Patient and study attributes are invented (`SYN0001`); UIDs are derived from the seed,
so the same seed gives the same files. Compressed variants (JPEG lossless) are made from these
files with dcmtk's `dcmcjpeg` in the tests, so the encoder is an independent implementation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    PYDICOM_IMPLEMENTATION_UID,
    XRayAngiographicImageStorage,
    generate_uid,
)

from sa2va_queue.producer.synth import _background, _grow_tree, _render_frame

SYNTH_PREFIX = "1.2.826.0.1.3680043.10.1453."  # our own root below pydicom's examples; seed-derived


@dataclass
class SynthCine:
    frames: np.ndarray  # uint8 (N, H, W)
    masks: np.ndarray  # bool (N, H, W), the exact vessel masks


def synth_cine(n_frames: int, seed: int = 0, size: int = 512) -> SynthCine:
    """One sequence of `n_frames` frames of the synthetic vessel tree."""
    rng = np.random.default_rng([seed, 0])
    tree = _grow_tree(rng)
    background = _background(rng, size)
    k_seq = rng.uniform(0.09, 0.15)
    frames, masks = [], []
    for k in range(n_frames):
        image, mask, _ = _render_frame(rng, tree, background, k_seq, k, size)
        frames.append(image)
        masks.append(mask)
    return SynthCine(np.stack(frames), np.stack(masks))


def study_uids(seed: int) -> tuple[str, str]:
    """(study UID, series UID) of the synthetic study with this seed."""
    return (generate_uid(SYNTH_PREFIX, [f"study-{seed}"]), generate_uid(SYNTH_PREFIX, [f"series-{seed}"]))


def xa_dataset(frames: np.ndarray, *, seed: int = 0, instance: int = 1, bits_stored: int = 8,
               window: tuple[float, float] | None = None, patient_id: str = "SYN0001") -> Dataset:
    """An XA instance (explicit VR little endian) holding `frames` (N, H, W): one frame -> single-
    frame, more -> a cine with Frame Time. `bits_stored` > 8 scales the 8-bit frames up into 16-bit
    storage; `window` (centre, width) is written as the VOI LUT module."""
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    n, rows, cols = frames.shape
    study_uid, series_uid = study_uids(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(SYNTH_PREFIX, [f"sop-{seed}-{instance}-{n}"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = XRayAngiographicImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    # patient / study / series / equipment (type 2 attributes present, possibly empty)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Angio", patient_id, "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20261201", "090000", "20261201", "090000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "XA", 1, instance
    ds.Manufacturer = "sa2va-queue synthetic"
    ds.PatientOrientation = ""
    # XA acquisition / image modules
    ds.KVP, ds.XRayTubeCurrent, ds.ExposureTime, ds.Exposure = 80, 800, 6, 5  # kV, mA, ms, mAs
    ds.Laterality = ""
    ds.RadiationSetting = "GR"
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = 30, 0
    ds.PixelIntensityRelationship = "LIN"
    ds.LossyImageCompression = "00"
    # image pixel
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.PixelRepresentation = 0
    if bits_stored == 8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        pixels = frames.astype(np.uint8)
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        pixels = (frames.astype(np.uint16) << (bits_stored - 8)).astype(np.uint16)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if n > 1:
        ds.NumberOfFrames = n
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 66.7  # ms: 15 frames/s
        ds.CineRate = 15
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    return ds


def to_jpeg_baseline(ds: Dataset, quality: int = 90) -> Dataset:
    """The same 8-bit grey instance with each frame JPEG baseline compressed (Pillow's libjpeg),
    encapsulated as DICOM requires. pydicom has no JPEG encoder; dcmcjpeg makes the lossless ones."""
    if ds.BitsAllocated != 8 or ds.SamplesPerPixel != 1:
        raise ValueError("to_jpeg_baseline: 8-bit grey frames only")
    n = int(ds.get("NumberOfFrames", 1))
    frames = np.frombuffer(ds.PixelData, np.uint8).reshape(n, ds.Rows, ds.Columns)
    fragments = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        fragments.append(buf.getvalue())
    out = ds.copy()
    out.file_meta = ds.file_meta.copy()
    out.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out.PixelData = encapsulate(fragments)
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    out.LossyImageCompression = "01"
    out.LossyImageCompressionMethod = "ISO_10918_1"
    return out


def write_xa_study(out: Path, n_frames: int, *, seed: int = 0, multiframe: bool = True, size: int = 512,
                   bits_stored: int = 8, window: tuple[float, float] | None = None) -> list[Path]:
    """Write a synthetic XA study under `out`: one cine instance, or one instance per frame; each
    frame's exact mask as `<file stem>_frame_<N>_mask.npy` is not written (tests use `synth_cine`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cine = synth_cine(n_frames, seed=seed, size=size)
    groups = [cine.frames] if multiframe else [f[None] for f in cine.frames]
    written = []
    for i, frames in enumerate(groups, start=1):
        ds = xa_dataset(frames, seed=seed, instance=i, bits_stored=bits_stored, window=window)
        path = out / f"XA{seed:04d}_{i:04d}{'_cine' if len(frames) > 1 else ''}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
