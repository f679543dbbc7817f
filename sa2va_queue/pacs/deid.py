"""De-identification of stored copies: DICOM PS3.15 Annex E Basic Application Level Confidentiality
Profile with the Retain UIDs Option, for the attributes XA, Enhanced XA and Secondary Capture
instances carry.

UIDs are kept (Retain UIDs Option, code 113110) because the SEG sent back must reference the
instances the PACS holds. Patient ID becomes a keyed hash (HMAC-SHA256 with a secret of this
installation), so the instances of one patient still group together but the ID cannot be recovered
by hashing candidate IDs. Dates and times in the patient/study/series modules are emptied (type 2)
or removed (type 3); names, institutions, physicians, device serials, free-text descriptions,
overlays and all private attributes are removed, at every nesting level.

Not covered (and said so in the README): text burned into the pixels (XA overlays of patient
names exist in older cath labs), and attributes outside the list below in exotic instances.
"""

from __future__ import annotations

import copy
import hashlib
import hmac

from pydicom import Dataset
from pydicom.sequence import Sequence

METHOD = "PS3.15 E.1 Basic Profile, Retain UIDs Option"  # LO: at most 64 characters
_CODES = (("113100", "Basic Application Confidentiality Profile"), ("113110", "Retain UIDs Option"))

# Z: present but empty (type 2 attributes of the modules these IODs use)
EMPTIED = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
           "StudyID", "ContentDate", "ContentTime", "PatientOrientation")
# X: removed
REMOVED = (
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "PatientAddress", "PatientTelephoneNumbers", "PatientBirthTime", "PatientAge", "PatientSize", "PatientWeight",
    "MedicalRecordLocator", "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments",
    "MilitaryRank", "BranchOfService", "CountryOfResidence", "RegionOfResidence", "PatientInsurancePlanCodeSequence",
    "IssuerOfPatientID", "PatientReligiousPreference", "ResponsiblePerson", "ResponsibleOrganization",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
    "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "StudyDescription", "SeriesDescription", "ImageComments", "DerivationDescription", "ProtocolName",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription", "ReasonForStudy", "RequestAttributesSequence",
    "ReferencedPatientSequence", "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence",
    "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "SeriesDate", "SeriesTime", "InstanceCreationDate",
    "InstanceCreationTime", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID", "ScheduledProcedureStepID", "RequestedProcedureID", "AdmissionID", "AdmittingDiagnosesDescription",
    "PatientState", "PregnancyStatus", "SmokingStatus", "Allergies", "PatientSexNeutered", "CurrentPatientLocation",
    "InstitutionCodeSequence", "PersonName", "ContentCreatorName", "VerifyingObserverName", "TextString",
)


def deidentify(ds: Dataset, secret: bytes) -> Dataset:
    """A de-identified copy of `ds` (file meta kept; UIDs kept); `ds` itself is not changed."""
    out = copy.deepcopy(ds)  # Dataset.copy() shares elements and sequence items with the original
    original_id = str(ds.get("PatientID", ""))
    _strip(out)
    out.PatientName = "ANONYMOUS"
    out.PatientID = "ANON-" + hmac.new(secret, original_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16] if original_id else ""
    for keyword in EMPTIED:
        if keyword in ds:
            setattr(out, keyword, "")
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = METHOD
    codes = []
    for value, meaning in _CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(codes)
    return out


def _strip(ds: Dataset) -> None:
    ds.remove_private_tags()
    for keyword in REMOVED:
        if keyword in ds:
            delattr(ds, keyword)
    for tag in [t for t in ds.keys() if 0x6000 <= t.group <= 0x60FF and t.group % 2 == 0]:  # overlays
        del ds[tag]
    for elem in list(ds.values()):
        if elem.VR == "SQ" and elem.value:
            for item in elem.value:
                _strip(item)
        elif elem.VR == "PN" and elem.keyword not in ("PatientName", "ReferringPhysicianName"):
            del ds[elem.tag]  # any other person name, wherever it is
