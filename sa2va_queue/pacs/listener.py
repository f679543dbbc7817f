"""The PACS listener: a pynetdicom storage SCP (C-STORE, C-ECHO) that feeds the queue.

    C-STORE ─► handlers.store_instance ─► disk (atomic) ─► 0x0000
                                     └─► StudyGrouper: study quiet for --stable-seconds
    flusher thread, every `tick_s`:
        due studies ─► their pending instances' frames ─► enqueue(run "pacs-<study key>", urgent)
    results thread:
        ResultPump.poll ─► SEG per finished instance ─► dicom_results ─► C-STORE to --send-to

Accepted presentation contexts: the image SOP classes of `producer.dicom.SUPPORTED_SOP_CLASSES`
(plus Verification) in the uncompressed syntaxes and every compressed syntax whose pydicom decoder
is installed; anything else is refused at negotiation. Calling AE titles must be on the allow-list
unless it is switched off explicitly. TLS: give a certificate and key (and a CA file to require
client certificates).
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sa2va_queue.core.exceptions import ConfigError, DicomError
from sa2va_queue.pacs import handlers
from sa2va_queue.pacs.grouping import StudyGrouper
from sa2va_queue.pacs.sender import ResultPump
from sa2va_queue.pacs.store import InstanceStore
from sa2va_queue.producer.dataset import Frame
from sa2va_queue.producer.dicom import MAX_FRAMES, SUPPORTED_SOP_CLASSES, read_dicom_frames

log = logging.getLogger("sa2va_queue.pacs")

# (run name, dataset folder of the run, frames): registers the frames and sends them (urgent queue);
# the frames are an iterator, read as it is consumed
EnqueueFn = Callable[[str, Path, Iterable[Frame]], None]


@dataclass
class ListenerConfig:
    ae_title: str
    port: int
    store_root: Path
    allow_aets: frozenset[str] | None  # None: any calling AE (only when asked for explicitly)
    host: str = "0.0.0.0"
    frames: str = "all"
    max_frames: int = MAX_FRAMES
    stable_s: float = 10.0
    deidentify: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # set: clients must present a certificate signed by it
    tick_s: float = 0.5
    max_pdu: int = 0  # 0: unlimited (pynetdicom default is 16 KiB)


def accepted_transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes plus each compressed one that an installed pydicom decoder handles."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        AllTransferSyntaxes,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        UID,
    )

    out = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
    for uid in AllTransferSyntaxes:
        uid = UID(uid)
        if uid in out or not uid.is_compressed:
            continue
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except NotImplementedError:
            continue
    return out


def tls_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca) if ca else None)
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: cannot load ({exc}); give a PEM certificate "
                          "and its private key") from None
    context.verify_mode = ssl.CERT_REQUIRED if ca else ssl.CERT_NONE
    return context


class Listener:
    def __init__(self, config: ListenerConfig, enqueue: EnqueueFn, results: ResultPump | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.enqueue, self.results, self.clock = config, enqueue, results, clock
        self.store = InstanceStore(config.store_root)
        self.grouper = StudyGrouper(config.stable_s)
        self.deps = handlers.StoreDeps(self.store, self.grouper, frames=config.frames, max_frames=config.max_frames,
                                       deid_secret=self._secret() if config.deidentify else None, clock=clock)
        self._server = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        for study_key in self.store.studies_with_pending():  # received before a restart, not yet enqueued
            self.grouper.add(study_key, clock())

    # -- network ---------------------------------------------------------------------------------

    def start(self) -> int:
        """Start the SCP and the background thread; returns the bound port."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_pdu_size = cfg.max_pdu
        ae.require_called_aet = True  # requests must name us
        if cfg.allow_aets is not None:
            ae.require_calling_aet = sorted(cfg.allow_aets)
        syntaxes = accepted_transfer_syntaxes()
        for sop_class in SUPPORTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification)
        ssl_context = tls_context(cfg.tls_cert, cfg.tls_key, cfg.tls_ca) if cfg.tls_cert and cfg.tls_key else None
        handlers_ = [
            (evt.EVT_C_STORE, handlers.handle_store, [self.deps]),
            (evt.EVT_C_ECHO, handlers.handle_echo),
            (evt.EVT_REJECTED, handlers.handle_rejected, [cfg.allow_aets]),
            (evt.EVT_ACCEPTED, handlers.handle_accepted),
        ]
        try:
            self._server = ae.start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers_,
                                           ssl_context=ssl_context)
        except OSError as exc:
            raise ConfigError(f"--port {cfg.port}: cannot listen ({exc.strerror or exc}); choose a free port") from None
        port = int(self._server.server_address[1])
        # two threads: a slow or unreachable destination must not hold up enqueueing new studies
        self._threads = [threading.Thread(target=self._flush_loop, name="pacs-flusher", daemon=True)]
        if self.results is not None:
            self._threads.append(threading.Thread(target=self._results_loop, name="pacs-results", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("listening as %s on %s:%d%s; accepted: %s", cfg.ae_title, cfg.host, port, " (TLS)" if ssl_context else "",
                 ", ".join(SUPPORTED_SOP_CLASSES.values()))
        return port

    def stop(self) -> None:
        """Stop serving (idempotent): the server socket first, then the background thread."""
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        for thread in self._threads:
            thread.join(timeout=60)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped or `timeout` seconds passed; True once stopped."""
        return self._stop.wait(timeout)

    # -- grouping and enqueueing -------------------------------------------------------------------

    def flush_due(self) -> list[str]:
        """Enqueue every study that has been quiet long enough; returns the run names enqueued."""
        runs = []
        for study_key in self.grouper.take_due(self.clock()):
            try:
                runs.append(self.flush(study_key))
            except Exception as exc:  # keep serving; the files stay pending and are tried again
                log.error("study %s: enqueue failed (%s: %s); retrying after the next quiet period", study_key,
                          type(exc).__name__, exc)
                self.grouper.put_back(study_key, self.clock())
        return runs

    def flush(self, study_key: str) -> str:
        """Enqueue the pending instances of one study as run `pacs-<study key>`. Frames are read one
        instance at a time while the producer streams them, so a long study never sits in memory."""
        folder = self.store.study_dir(study_key)
        paths = self.store.pending(study_key)
        run_name = f"pacs-{study_key}"
        count = [0]
        if paths:
            self.enqueue(run_name, folder, self._frames(folder, paths, count))
            self.store.mark_enqueued(study_key, paths)
        if self.results is not None:
            self.results.track(run_name)
        log.info("study %s: %d instance(s), %d frame(s) enqueued as run %s", study_key, len(paths), count[0], run_name)
        return run_name

    def _frames(self, folder: Path, paths: list[Path], count: list[int]) -> Iterator[Frame]:
        for path in paths:
            try:
                frames = read_dicom_frames(path, folder, self.config.frames, self.config.max_frames)
            except DicomError as exc:  # checked at receipt; a file damaged on disk since fails visibly
                frames = [Frame(name=path.name, path=path, data=b"", width=None, height=None, mode=None,
                                media_type=None, gt_mask=None, gt_source=None, error=str(exc))]
            count[0] += len(frames)
            yield from frames

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.config.tick_s):
            self.flush_due()

    def _results_loop(self) -> None:
        assert self.results is not None
        while not self._stop.wait(max(self.config.tick_s, 0.5)):
            try:
                self.results.poll()
            except Exception as exc:  # database briefly away: the next tick tries again
                log.error("results: %s: %s", type(exc).__name__, exc)

    def _secret(self) -> bytes:
        """This installation's de-identification key (created once, owner-only)."""
        path = self.store.root / ".deid-key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        return path.read_bytes()
