"""Every error this project raises on purpose.

    Sa2vaQueueError                 base class; its message names the thing and what to do
    ├── ConfigError                 a setting is missing or malformed (names the setting)
    ├── ServiceUnavailable          Redis or the database cannot be reached (names the setting)
    ├── InputError                  a user file is unusable (names the file)
    │   ├── ImageDecodeError        unreadable, truncated or empty image
    │   │   └── ImageTooLarge       more pixels than SA2VA_MAX_PIXELS (or a decompression bomb)
    │   ├── AnnotationError         malformed polygon / LabelMe / COCO annotation
    │   ├── GroundTruthMismatch     ground-truth mask size differs from its image
    │   └── DicomError              a DICOM file we cannot segment (SOP class, frame count, ...)
    │       ├── DicomDecodeError    not DICOM, truncated, or pixel data that cannot be decoded
    │       └── DicomTooLarge       more frames than the frame limit
    ├── ModelError                  a model cannot be built or loaded
    │   └── UnknownModel            no backend of that name
    ├── NotFound                    a run or job named on the command line does not exist
    │   └── BlobCorrupted           stored bytes no longer match their sha256
    ├── JobFailed                   a job failed; carries the reason stored with the job
    ├── AttemptsExhausted           a job was delivered more often than SA2VA_MAX_ATTEMPTS
    └── WaitTimeout                 jobs still unfinished when a wait ran out (they stay stored)
"""

from __future__ import annotations


class Sa2vaQueueError(Exception):
    """Base class. The message is shown to users as one line: say what and how to fix it."""


class ConfigError(Sa2vaQueueError):
    pass


class ServiceUnavailable(Sa2vaQueueError):
    pass


class InputError(Sa2vaQueueError):
    pass


class ImageDecodeError(InputError):
    pass


class ImageTooLarge(ImageDecodeError):
    pass


class AnnotationError(InputError):
    pass


class GroundTruthMismatch(InputError):
    pass


class DicomError(InputError):
    pass


class DicomDecodeError(DicomError, ImageDecodeError):
    pass


class DicomTooLarge(DicomError):
    pass


class ModelError(Sa2vaQueueError):
    pass


class UnknownModel(ModelError):
    pass


class NotFound(Sa2vaQueueError):
    pass


class BlobCorrupted(NotFound):
    pass


class JobFailed(Sa2vaQueueError):
    pass


class AttemptsExhausted(Sa2vaQueueError):
    pass


class WaitTimeout(Sa2vaQueueError):
    pass
