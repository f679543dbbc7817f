"""DICOM Segmentation (binary, one segment "Blood vessel") for the frames of one source instance.

Why the dataset is built here with pydicom rather than with highdicom's `Segmentation`: highdicom
0.28 only accepts sources with a frame of reference or a tiled-image layout and refuses classic
X-Ray Angiographic instances (single- and multi-frame). The Segmentation IOD itself (PS3.3 A.51)
has no such restriction: the frame of reference and plane position macros are required only when the
source has them, which XA images do not. Building the SEG against the real XA instance keeps what a
viewer needs to lay it over the cine: every SEG frame names its source instance and frame number in
the Derivation Image macro. Deriving a secondary capture first (to please highdicom) would instead
point the SEG at an image the PACS never had. The result is checked by a pydicom round trip and a
highdicom read-back (`validate_seg`), and by dciodvfy in the tests where dicom3tools is installed.

Layout: one SEG frame per segmented source frame, in source frame order; dimensions are the segment
number and the Temporal Position Index (= the source frame number, since XA frames are a cine).
UIDs are derived from the source UIDs and the model version, so rebuilding a result for the same
instance and model gives the same SOP Instance UID (a PACS then replaces rather than duplicates).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from datetime import datetime, timezone

import numpy as np
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, SegmentationStorage, generate_uid

UID_PREFIX = "1.2.826.0.1.3680043.10.1453."  # same root as the synthetic data; entropy makes them unique
MANUFACTURER = "sa2va-queue"
SEGMENT_LABEL = "Blood vessel"
# SNOMED CT codes (PS3.16 CID 7150 / 7151)
CATEGORY = ("91723000", "SCT", "Anatomical Structure")
PROPERTY = ("59820001", "SCT", "Blood vessel")
ALGORITHM_FAMILY = ("123109", "DCM", "Artificial Intelligence")
PURPOSE_SOURCE = ("121322", "DCM", "Source image for image processing operation")
DERIVATION = ("113076", "DCM", "Segmentation")

# Patient, study and equipment-independent attributes copied from the source so the SEG files
# beside it in the PACS (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2)
_COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDsSequence",
           "PatientAge", "PatientWeight", "PatientSize", "PatientIdentityRemoved", "DeidentificationMethod",
           "DeidentificationMethodCodeSequence", "StudyInstanceUID", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def copy_patient_study(source: Dataset, ds: Dataset) -> None:
    """Patient and study attributes of `source` into `ds`; type 2 ones present even when empty."""
    for keyword in _COPIED:
        if keyword in source:
            ds[keyword] = copy.deepcopy(source[keyword])
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, "")


def seg_uids(source: Dataset, model_version: str) -> tuple[str, str]:
    """(SEG series UID, SEG SOP Instance UID) for this source instance and model version."""
    series = generate_uid(UID_PREFIX, [str(source.SeriesInstanceUID), model_version, "seg-series"])
    sop = generate_uid(UID_PREFIX, [str(source.SOPInstanceUID), model_version, "seg"])
    return series, sop


def build_seg(source: Dataset, masks: Mapping[int, np.ndarray], *, model_version: str, algorithm_name: str,
              series_number: int = 900, instance_number: int | None = None) -> Dataset:
    """The SEG for `masks` ({source frame number (1-based): bool (Rows, Columns)}) of `source`.

    `source` needs its header only (pixel data is not read). `model_version` goes into Algorithm
    Version and Software Versions; `algorithm_name` is the backend (e.g. "sa2va", "vesselness").
    """
    if not masks:
        raise ValueError("build_seg: no masks given; a SEG needs at least one frame")
    rows, cols = int(source.Rows), int(source.Columns)
    numbers = sorted(masks)
    n_source = int(source.get("NumberOfFrames", 1) or 1)
    for number in numbers:
        shape = np.shape(masks[number])
        if shape != (rows, cols):
            raise ValueError(f"build_seg: mask of frame {number} is {shape}, the source is {(rows, cols)}")
        if not 1 <= number <= n_source:
            raise ValueError(f"build_seg: frame {number} is outside the source's 1..{n_source}")
    series_uid, sop_uid = seg_uids(source, model_version)
    now = datetime.now(timezone.utc)
    multi_frame_source = "NumberOfFrames" in source

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID, ds.SOPInstanceUID = SegmentationStorage, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    copy_patient_study(source, ds)
    # series, equipment, image
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "SEG", series_uid, series_number
    ds.SeriesDescription = f"Vessel segmentation ({algorithm_name})"
    ds.InstanceNumber = instance_number if instance_number is not None else int(source.get("InstanceNumber", 1) or 1)
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, algorithm_name
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0", model_version[:64]
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = source.get("PatientOrientation", "")  # type 2C (General Image)
    ds.ContentLabel, ds.ContentDescription, ds.ContentCreatorName = "VESSELS", "Coronary vessel mask", ""
    ds.SegmentationType = "BINARY"
    ds.SegmentsOverlap = "NO"
    ds.LossyImageCompression = "00"
    ds.SegmentSequence = Sequence([_segment(model_version, algorithm_name)])
    # image pixel: 1 bit per pixel, frames packed back to back
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.NumberOfFrames = len(numbers)
    stack = np.stack([np.asarray(masks[k], dtype=bool) for k in numbers]).astype(np.uint8)
    ds.PixelData = pack_bits(stack.ravel())
    ds["PixelData"].VR = "OB"
    # multi-frame dimensions and functional groups
    org_uid = generate_uid(UID_PREFIX, [sop_uid, "dimensions"])
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=org_uid)])
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionOrganizationUID=org_uid, DimensionIndexPointer=0x0062000B, FunctionalGroupPointer=0x0062000A,
              DimensionDescriptionLabel="Segment Number"),
        _item(DimensionOrganizationUID=org_uid, DimensionIndexPointer=0x00209128, FunctionalGroupPointer=0x00209111,
              DimensionDescriptionLabel="Source Frame Number"),
    ])
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    per_frame = []
    for number in numbers:
        source_ref = _item(ReferencedSOPClassUID=source.SOPClassUID, ReferencedSOPInstanceUID=source.SOPInstanceUID)
        if multi_frame_source:
            source_ref.ReferencedFrameNumber = number
        source_ref.PurposeOfReferenceCodeSequence = Sequence([_code(*PURPOSE_SOURCE)])
        derivation = _item(SourceImageSequence=Sequence([source_ref]),
                           DerivationCodeSequence=Sequence([_code(*DERIVATION)]))
        frame = Dataset()
        frame.DerivationImageSequence = Sequence([derivation])
        frame.FrameContentSequence = Sequence([_item(DimensionIndexValues=[1, number], TemporalPositionIndex=number)])
        frame.SegmentIdentificationSequence = Sequence([_item(ReferencedSegmentNumber=1)])
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    # common instance reference: the source instance within its series
    ds.ReferencedSeriesSequence = Sequence([_item(
        SeriesInstanceUID=source.SeriesInstanceUID,
        ReferencedInstanceSequence=Sequence([_item(ReferencedSOPClassUID=source.SOPClassUID,
                                                   ReferencedSOPInstanceUID=source.SOPInstanceUID)]))])
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM file (preamble, file meta) in memory."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def validate_seg(data: bytes, source: Dataset, masks: Mapping[int, np.ndarray]) -> None:
    """Read the encoded SEG back with pydicom and highdicom; raise ValueError unless the frames,
    references and segment are the ones written."""
    import highdicom  # heavy import, only where results are built

    ds = dcmread(io.BytesIO(data))
    numbers = sorted(masks)
    decoded = ds.pixel_array.reshape(len(numbers), ds.Rows, ds.Columns).astype(bool)
    for k, number in enumerate(numbers):
        if not np.array_equal(decoded[k], np.asarray(masks[number], bool)):
            raise ValueError(f"SEG round trip: frame {number} differs after pydicom decoding")
    seg = highdicom.seg.segread(io.BytesIO(data))
    if seg.number_of_segments != 1 or seg.get_segment_description(1).segment_label != SEGMENT_LABEL:
        raise ValueError("SEG read-back: highdicom does not see the one 'Blood vessel' segment")
    refs = {str(item.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for item in s.ReferencedInstanceSequence}
    if refs != {str(source.SOPInstanceUID)}:
        raise ValueError(f"SEG read-back: references {sorted(refs)}, expected the source instance")
    for k, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0]
        if str(ref.ReferencedSOPInstanceUID) != str(source.SOPInstanceUID):
            raise ValueError(f"SEG read-back: frame {k + 1} references another instance")
        if "NumberOfFrames" in source and int(ref.ReferencedFrameNumber) != numbers[k]:
            raise ValueError(f"SEG read-back: frame {k + 1} references source frame {ref.ReferencedFrameNumber}")


def _segment(model_version: str, algorithm_name: str) -> Dataset:
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel = 1, SEGMENT_LABEL
    segment.SegmentedPropertyCategoryCodeSequence = Sequence([_code(*CATEGORY)])
    segment.SegmentedPropertyTypeCodeSequence = Sequence([_code(*PROPERTY)])
    segment.SegmentAlgorithmType = "AUTOMATIC"
    segment.SegmentAlgorithmName = algorithm_name[:64]
    algorithm = _item(AlgorithmName=algorithm_name[:64], AlgorithmVersion=model_version[:64])
    algorithm.AlgorithmFamilyCodeSequence = Sequence([_code(*ALGORITHM_FAMILY)])
    segment.SegmentationAlgorithmIdentificationSequence = Sequence([algorithm])
    segment.RecommendedDisplayCIELabValue = [43803, 53687, 46100]  # red (sRGB 220, 40, 40) in PCS-Lab
    return segment


def _item(**attributes) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item
