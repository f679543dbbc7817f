"""A colour overlay secondary capture, for viewers without DICOM SEG support.

The source frames as the reader windows them, with the vessel mask blended in red (half opacity),
as RGB: a Multi-frame True Color Secondary Capture for a cine, a Secondary Capture for a single
frame. It is a picture for reading rooms, not a measurement: the SEG is the result of record. It
references its source instance and frames (Source Image Sequence) and is marked derived with a burned
in annotation (the overlay itself), in a series of its own; UIDs are derived like the SEG's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from sa2va_queue.pacs.seg import UID_PREFIX, copy_patient_study
from sa2va_queue.producer.dicom import decode_frames

COLOUR = np.array([220, 40, 40], np.float32)  # the SEG's recommended display colour
ALPHA = 0.5


def blend(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 RGB: `grey` (H, W) or RGB (H, W, 3) with `mask` blended in COLOUR at ALPHA."""
    rgb = np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey
    out = rgb.astype(np.float32)
    out[mask] = (1 - ALPHA) * out[mask] + ALPHA * COLOUR
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def build_overlay(source: Dataset, masks: Mapping[int, np.ndarray], *, model_version: str,
                  algorithm_name: str, series_number: int = 901) -> Dataset:
    """The overlay SC of `masks` ({source frame number: bool mask}); `source` with its pixel data."""
    numbers = sorted(masks)
    frames = {f.number: f.pixels for f in decode_frames(source, "source", ",".join(map(str, numbers)),
                                                         max_frames=max(numbers) + 10**6)}
    pixels = np.stack([blend(frames[k], np.asarray(masks[k], bool)) for k in numbers])
    multi = len(numbers) > 1
    sop_class = MultiFrameTrueColorSecondaryCaptureImageStorage if multi else SecondaryCaptureImageStorage
    sop_uid = generate_uid(UID_PREFIX, [str(source.SOPInstanceUID), model_version, "overlay"])
    now = datetime.now(timezone.utc)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    copy_patient_study(source, ds)
    ds.Modality = "OT"  # a derived picture, not an acquisition (keeps it out of the XA hanging protocols)
    ds.SeriesInstanceUID = generate_uid(UID_PREFIX, [str(source.SeriesInstanceUID), model_version, "overlay-series"])
    ds.SeriesNumber, ds.InstanceNumber = series_number, int(source.get("InstanceNumber", 1) or 1)
    ds.SeriesDescription = f"Vessel overlay ({algorithm_name})"
    ds.Laterality = source.get("Laterality", "")  # type 2C in General Series for OT
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Manufacturer, ds.ConversionType = "sa2va-queue", "WSD"
    ds.SoftwareVersions = model_version[:64]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = source.get("PatientOrientation", "")
    ds.BurnedInAnnotation = "YES"  # the overlay is drawn into the pixels
    ds.DerivationDescription = f"vessel mask of {algorithm_name} {model_version}"[:1024]
    ds.LossyImageCompression = "00"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    if "NumberOfFrames" in source:
        ref.ReferencedFrameNumber = numbers if multi else numbers[0]
    ds.SourceImageSequence = Sequence([ref])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if multi:
        ds.NumberOfFrames = len(numbers)
        ds.FrameIncrementPointer = 0x00181065  # Frame Time Vector: source frames may be a selection
        ds.FrameTimeVector = [0.0] + [float(b - a) * float(source.get("FrameTime", 0) or 0)
                                      for a, b in zip(numbers, numbers[1:])]
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    return ds
