"""`sa2va-queue pacs listen` and `sa2va-queue pacs status`: the hospital PACS hook.

Heavy imports (pynetdicom, the queue stack) happen inside the commands.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from sa2va_queue.core.exceptions import ConfigError

console = Console()
pacs_app = typer.Typer(no_args_is_help=True, help="DICOM in and out: the PACS listener and its results.")


def parse_allow_list(values: list[str]) -> frozenset[str]:
    titles = {t.strip() for v in values for t in v.split(",") if t.strip()}
    bad = sorted(t for t in titles if len(t) > 16 or "\\" in t)
    if bad:
        raise ConfigError(f"--allow-aet {bad[0]!r}: an AE title has at most 16 characters and no backslash")
    return frozenset(titles)


def queue_enqueue(settings, spec):
    """The listener's enqueue step: the producer API (`producer.enqueue.enqueue_frames`), urgent queue."""
    from sa2va_queue.producer.enqueue import enqueue_frames

    def enqueue(run_name: str, folder: Path, frames) -> None:
        enqueue_frames(settings, frames, model=spec, run_name=run_name, dataset=str(folder), urgent=True)

    return enqueue


@pacs_app.command("listen")
def listen_command(
    ctx: typer.Context,
    ae_title: str = typer.Option("SA2VA", "--ae-title", help="Our AE title (the PACS sends to it)"),
    port: int = typer.Option(11112, "--port", help="TCP port to listen on"),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to bind"),
    allow_aet: list[str] = typer.Option([], "--allow-aet", help="Calling AE titles allowed to connect (comma-separated or repeated)"),
    allow_any_aet: bool = typer.Option(False, "--allow-any-aet", help="Switch the AE title allow-list off (not for production)"),
    model: str = typer.Option("vesselness", "--model", help="Model spec whose workers segment the frames"),
    send_to: Optional[str] = typer.Option(None, "--send-to", help="Where the SEGs go: AET@host:port"),
    frames: str = typer.Option("all", "--frames", help="Frames of a multi-frame instance: all, every:K or a list 1,5,9"),
    stable_seconds: float = typer.Option(10.0, "--stable-seconds", help="A study is enqueued after this long without a new instance"),
    max_frames: int = typer.Option(2000, "--max-frames", help="Instances with more frames are refused (0xA700)"),
    deidentify: bool = typer.Option(False, "--deidentify", help="De-identify the stored copies (PS3.15 basic profile, UIDs kept)"),
    store_dir: Optional[Path] = typer.Option(None, "--store-dir", help="Received instances (default DATA_DIR/pacs)"),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate: DICOM over TLS"),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert"),
    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="CA file: require client certificates signed by it"),
    device: Optional[str] = typer.Option(None, help="Device of the local worker (no SA2VA_BROKER_URL): cpu, cuda, auto"),
) -> None:
    """C-STORE SCP: studies in, segmented on the urgent queue, DICOM SEGs back to --send-to."""
    from sa2va_queue.cli import runner
    from sa2va_queue.cli.main import _settings
    from sa2va_queue.core.modelspec import ModelSpec
    from sa2va_queue.db.blobs import BlobStore
    from sa2va_queue.db.session import get_sessionmaker
    from sa2va_queue.pacs.listener import Listener, ListenerConfig
    from sa2va_queue.pacs.sender import Destination, ResultPump
    from sa2va_queue.producer.dicom import parse_frame_selection

    allowed = parse_allow_list(allow_aet)
    if not allowed and not allow_any_aet:
        raise ConfigError("--allow-aet is required: list the AE titles of the PACS that may send (e.g. "
                          "--allow-aet PACS1,MODALITY2), or pass --allow-any-aet to switch the allow-list off")
    if not 0 < port < 65536 or len(ae_title) > 16 or not ae_title.strip():
        raise ConfigError(f"--ae-title {ae_title!r} / --port {port}: an AE title of 1-16 characters and a port 1-65535")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both for DICOM over TLS")
    parse_frame_selection(frames)
    dest = Destination.parse(send_to) if send_to else None
    spec = ModelSpec.parse(model)
    settings = _settings(ctx)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner.prepare(settings)  # data dir, database reachable and migrated, broker reachable
    with runner.local_stack(settings, spec, console, device) as stack:
        live = stack.settings
        if not live.is_local:
            runner.require_workers(live, spec)
        pump = ResultPump(get_sessionmaker(live.sqlalchemy_url), BlobStore(live.blob_dir), dest=dest, calling_ae=ae_title)
        for run_name in _pacs_runs(live.sqlalchemy_url):  # results of earlier sessions not yet built or sent
            pump.track(run_name)
        config = ListenerConfig(ae_title=ae_title, port=port, host=host, store_root=store_dir or settings.data_dir / "pacs",
                                allow_aets=None if allow_any_aet else allowed, frames=frames, max_frames=max_frames,
                                stable_s=stable_seconds, deidentify=deidentify, tls_cert=tls_cert, tls_key=tls_key,
                                tls_ca=tls_ca)
        listener = Listener(config, queue_enqueue(live, spec), pump)
        bound = listener.start()
        console.print(f"listening as {ae_title} on {host}:{bound}; model {spec}; results to {dest or 'kept, not sent'}. "
                      "Ctrl-C stops.")
        # SIGTERM (docker stop, systemd) stops like Ctrl-C: the private Redis and worker go too
        previous = signal.signal(signal.SIGTERM, lambda *_: listener.stop())
        try:
            while not listener.wait(5.0):
                stack.check()  # the private Redis or the local worker died: say so and stop
        except KeyboardInterrupt:
            console.print("stopping")
        finally:
            signal.signal(signal.SIGTERM, previous)
            listener.stop()


@pacs_app.command("status")
def status_command(ctx: typer.Context) -> None:
    """DICOM results per delivery state, and the sends that keep failing."""
    from sa2va_queue.cli.main import _settings
    from sa2va_queue.db import dicom_results
    from sa2va_queue.db.session import check_database, session_scope, upgrade_schema

    settings = _settings(ctx)
    check_database(settings.sqlalchemy_url)
    upgrade_schema(settings.sqlalchemy_url)
    with session_scope(settings.sqlalchemy_url) as session:
        summary = dicom_results.summary(session)
    table = Table(title="DICOM results")
    table.add_column("state")
    table.add_column("SEGs", justify="right")
    for state in ("pending", "failed", "sent", "kept"):
        table.add_row(state, str(summary.by_status.get(state, 0)))
    console.print(table)
    for uid, attempts, error in summary.failing:
        console.print(f"[yellow]failing[/] SEG {uid}: {attempts} attempt(s), last error: {error}", highlight=False)


def _pacs_runs(url: str) -> list[str]:
    from sa2va_queue.db.jobstore import run_names
    from sa2va_queue.db.session import session_scope

    with session_scope(url) as session:
        return run_names(session, "pacs-")


def register(app: typer.Typer) -> None:
    app.add_typer(pacs_app, name="pacs")
