"""Every error this project raises on purpose.

    Sa2vaQueueError                 base class; its message names the thing and what to do
    ├── ConfigError                 a setting is missing or malformed (names the setting)
    ├── ServiceUnavailable          Redis or the database cannot be reached (names the setting)
    ├── InputError                  a user file is unusable (names the file)
    │   ├── ImageDecodeError        unreadable, truncated or empty image
    │   ├── AnnotationError         malformed polygon / LabelMe / COCO annotation
    │   └── GroundTruthMismatch     ground-truth mask size differs from its image
    ├── ModelError                  a model cannot be built or loaded
    │   └── UnknownModel            no backend of that name
    ├── NotFound                    a run or job named on the command line does not exist
    ├── JobFailed                   a job failed; carries the reason stored with the job
    └── AttemptsExhausted           a job was delivered more often than SA2VA_MAX_ATTEMPTS
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


class AnnotationError(InputError):
    pass


class GroundTruthMismatch(InputError):
    pass


class ModelError(Sa2vaQueueError):
    pass


class UnknownModel(ModelError):
    pass


class NotFound(Sa2vaQueueError):
    pass


class JobFailed(Sa2vaQueueError):
    pass


class AttemptsExhausted(Sa2vaQueueError):
    pass
