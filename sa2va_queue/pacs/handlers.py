"""pynetdicom event handlers: plain functions, dependencies passed in, DICOM status codes out.

C-STORE (PS3.4 B.2.3 status codes):
    0x0000  stored: the instance is on disk (atomically) and its study will be enqueued
    0xA700  refused, out of resources: the disk is full (or unwritable), or more frames than
            --max-frames
    0xC210  cannot understand: not parseable, required attributes missing, or pixel data that
            cannot be decoded (truncated, unsupported compression)
    0xC211  unable to process: an unexpected error (logged with its type; the listener goes on)
SOP classes other than the accepted image classes never get here: their presentation contexts
are refused at association negotiation. Logs name instances by the hash of their UIDs only.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom import Dataset

from sa2va_queue.core.exceptions import DicomError, DicomTooLarge
from sa2va_queue.pacs.deid import deidentify
from sa2va_queue.pacs.grouping import StudyGrouper
from sa2va_queue.pacs.seg import to_bytes
from sa2va_queue.pacs.store import InstanceStore, uid_key
from sa2va_queue.producer.dicom import MAX_FRAMES, SUPPORTED_SOP_CLASSES, decode_frames, inspect_dataset

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210
UNABLE_TO_PROCESS = 0xC211

log = logging.getLogger("sa2va_queue.pacs")


@dataclass
class StoreDeps:
    store: InstanceStore
    grouper: StudyGrouper
    frames: str = "all"
    max_frames: int = MAX_FRAMES
    deid_secret: bytes | None = None  # set: stored copies are de-identified
    clock: Callable[[], float] = field(default=time.monotonic)


def handle_echo(event, logger: logging.Logger = log) -> int:
    logger.info("C-ECHO from %s", _calling(event))
    return SUCCESS


def handle_rejected(event, allowed: frozenset[str] | None, logger: logging.Logger = log) -> None:
    """We rejected an association (pynetdicom checks the AE titles): say why, in one line."""
    calling = _calling(event)
    if allowed is not None and calling not in allowed:
        logger.warning("association from AE title %r rejected: not on --allow-aet", calling)
    else:
        logger.warning("association from AE title %r rejected (wrong called AE title, or too many associations)",
                       calling)


def handle_accepted(event, logger: logging.Logger = log) -> None:
    """SOP classes refused at negotiation, in one line: a warning when nothing the peer proposed was
    accepted (it wanted to send something we do not take), else debug (SCUs propose dozens)."""
    refused = sorted({str(c.abstract_syntax) for c in getattr(event.assoc, "rejected_contexts", [])})
    if refused:
        shown = ", ".join(_sop_name(uid) for uid in refused[:4]) + (f" and {len(refused) - 4} more" if len(refused) > 4 else "")
        level = logging.DEBUG if getattr(event.assoc, "accepted_contexts", []) else logging.WARNING
        logger.log(level, "from %s: %d proposed SOP class(es) refused at negotiation: %s", _calling(event),
                   len(refused), shown)


def handle_store(event, deps: StoreDeps, logger: logging.Logger = log) -> int:
    """pynetdicom EVT_C_STORE: decode the dataset, then `store_instance`."""
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
    except Exception as exc:  # pydicom raises many types on a damaged stream
        logger.warning("C-STORE from %s: 0x%04X, dataset cannot be decoded (%s)", _calling(event), CANNOT_UNDERSTAND,
                       type(exc).__name__)
        return CANNOT_UNDERSTAND
    return store_instance(ds, lambda: event.encoded_dataset(), deps, calling=_calling(event), logger=logger)


def store_instance(ds: Dataset, encoded: Callable[[], bytes], deps: StoreDeps, *, calling: str = "?",
                   logger: logging.Logger = log) -> int:
    """Validate (header, frame limit, every selected frame decodes), write atomically, then group.

    `encoded` gives the instance as received (file meta included); it is written as is unless the
    copy must be de-identified."""
    sop_key = uid_key(str(ds.get("SOPInstanceUID", "")))
    label = f"instance {sop_key}"
    try:
        info = inspect_dataset(ds, label, deps.max_frames)
        decode_frames(ds, label, deps.frames, deps.max_frames)
    except DicomTooLarge as exc:
        logger.warning("C-STORE from %s: 0x%04X, %s", calling, OUT_OF_RESOURCES, exc)
        return OUT_OF_RESOURCES
    except DicomError as exc:
        logger.warning("C-STORE from %s: 0x%04X, %s", calling, CANNOT_UNDERSTAND, exc)
        return CANNOT_UNDERSTAND
    except Exception as exc:  # a handler must answer, never raise into pynetdicom
        logger.error("C-STORE from %s: 0x%04X, %s while checking %s", calling, UNABLE_TO_PROCESS,
                     type(exc).__name__, label)
        return UNABLE_TO_PROCESS
    try:
        if deps.deid_secret is not None:
            data = to_bytes(deidentify(ds, deps.deid_secret))
        else:
            data = encoded()
        deps.store.write(info.study_uid, info.sop_uid, data)
    except OSError as exc:
        why = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or type(exc).__name__
        logger.error("C-STORE from %s: 0x%04X, cannot store %s under %s (%s)", calling, OUT_OF_RESOURCES, label,
                     deps.store.root, why)
        return OUT_OF_RESOURCES
    except Exception as exc:
        logger.error("C-STORE from %s: 0x%04X, %s while storing %s", calling, UNABLE_TO_PROCESS, type(exc).__name__, label)
        return UNABLE_TO_PROCESS
    study_key = uid_key(info.study_uid)
    deps.grouper.add(study_key, deps.clock())
    logger.info("C-STORE from %s: stored %s (%s, %d frame(s)) in study %s", calling, label,
                SUPPORTED_SOP_CLASSES[info.sop_class_uid], info.n_frames, study_key)
    return SUCCESS


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name or uid


def _calling(event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except AttributeError:
        return "?"
