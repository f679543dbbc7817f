"""`sa2va-queue status`: jobs per state per run, model versions and who serves them, queues, workers.

Workers are found by their heartbeat keys, which also list the queues they consume, so the command
needs no broadcast and answers in about a second (mostly Python start-up). Running jobs held by a
worker whose heartbeat expired show as `orphaned`: the next janitor sweep sends them again.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from sa2va_queue.core.broker import BULK_QUEUE, URGENT_QUEUE, check_broker, redis_client
from sa2va_queue.core.metrics import LEAK_DICE, leak_suspected
from sa2va_queue.core.names import printable
from sa2va_queue.core.settings import Settings
from sa2va_queue.db.jobstore import JobStore
from sa2va_queue.db.models import JobStatus
from sa2va_queue.db.session import check_database, upgrade_schema
from sa2va_queue.worker.heartbeat import alive, announced

STATES = [s.value for s in JobStatus] + ["orphaned", "dead-lettered"]


def collect_status(settings: Settings, run_name: str | None = None) -> dict[str, Any]:
    """Everything `status` shows, as plain data (the --json output)."""
    check_database(settings.sqlalchemy_url)
    upgrade_schema(settings.sqlalchemy_url)
    store = JobStore(settings.sqlalchemy_url)
    out: dict[str, Any] = {"broker": None if settings.is_local else "configured"}
    workers: dict[str, dict[str, Any]] = {}
    dead: list[str] = []
    depths: dict[str, int] = {}
    if not settings.is_local:
        check_broker(settings.broker_url)
        client = redis_client(settings.broker_url)
        running = store.running_workers()
        dead = sorted(w for w in running if w not in alive(client, running))
        # live workers and their queues from their heartbeat keys: no broadcast to wait for
        for name, queues in sorted(announced(client).items()):
            workers[name] = {"queues": queues, "alive": True, "running_jobs": running.get(name, 0)}
        depths = _queue_depths(client, {q for w in workers.values() for q in w["queues"]})
    runs = store.counts(run_name, dead_workers=dead)
    dice = store.dice_summary([name for name, _ in runs], LEAK_DICE)
    out["runs"] = []
    for name, counts in runs:
        n_scored, n_near, mean, rest = dice.get(name, (0, 0, None, None))
        out["runs"].append({"run": name, **{s: counts.get(s, 0) for s in STATES}, "near_perfect": n_near,
                            "scored": n_scored, "leak_suspected": any(leak_suspected(n_scored, n_near, mean, rest))})
    served = {q for w in workers.values() for q in w["queues"]}
    out["models"] = [
        {"model": spec, "key": key, "unfinished_jobs": n,
         "workers": sorted(w for w, info in workers.items() if any(q.endswith("." + key) for q in info["queues"]))}
        for key, (spec, n) in sorted(store.models().items())
    ] if not settings.is_local else []
    out["queues"] = [{"queue": q, "waiting": n, "workers": sum(q in w["queues"] for w in workers.values()),
                      "served": q in served} for q, n in depths.items()]
    out["workers"] = [{"worker": name, **info} for name, info in workers.items()]
    out["dead_workers"] = dead
    out["dicom_results"] = _dicom_results(settings)
    return out


def print_status(settings: Settings, console: Console, run_name: str | None = None, as_json: bool = False) -> None:
    data = collect_status(settings, run_name)
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title="jobs per run")
    table.add_column("run")
    for state in STATES:
        table.add_column(state, justify="right")
    table.add_column(f"Dice >= {LEAK_DICE}", justify="right")
    for row in data["runs"]:
        near = f"{row['near_perfect']}/{row['scored']}" + (" [bold red]leak?[/]" if row["leak_suspected"] else "")
        table.add_row(printable(row["run"]), *[str(row[s]) for s in STATES], near)
    console.print(table)
    if any(row["leak_suspected"] for row in data["runs"]):
        console.print("[bold red]leak?[/]: near-perfect frames suggest the ground truth reached the predictions; "
                      "the report lists them")
    _print_dicom_results(console, data["dicom_results"])
    if settings.is_local:
        console.print("no SA2VA_BROKER_URL: no shared queue or workers to show (`run` starts its own)")
        return
    models = Table(title="model versions")
    for col in ("model", "key", "unfinished jobs", "workers"):
        models.add_column(col)
    for m in data["models"]:
        who = ", ".join(m["workers"]) or ("[bold red]none[/]" if m["unfinished_jobs"] else "none")
        models.add_row(printable(m["model"]), m["key"], str(m["unfinished_jobs"]), who if not m["workers"]
                       else printable(who))
    console.print(models)
    queues = Table(title="queues")
    for col in ("queue", "waiting", "workers"):
        queues.add_column(col, justify="right" if col != "queue" else "left")
    for q in data["queues"]:
        queues.add_row(printable(q["queue"]), str(q["waiting"]), str(q["workers"]))
    console.print(queues)
    workers = Table(title="workers")
    for col in ("worker", "alive", "running jobs", "queues"):
        workers.add_column(col)
    for w in data["workers"]:
        workers.add_row(printable(w["worker"]), "yes" if w["alive"] else "no", str(w["running_jobs"]),
                        printable(", ".join(w["queues"])))
    console.print(workers)
    if data["dead_workers"]:
        console.print(f"[yellow]dead worker(s) {printable(', '.join(data['dead_workers']))}: their jobs are "
                      "orphaned and re-sent by the next janitor sweep[/]")


def _queue_depths(client, known: set[str]) -> dict[str, int]:
    """Messages waiting in every sa2va queue (an empty Redis list vanishes: `known` ones show 0)."""
    depths = {name: 0 for name in known}
    for prefix in (URGENT_QUEUE, BULK_QUEUE):
        for key in client.scan_iter(match=f"{prefix}.*", count=500):
            if client.type(key) == b"list":
                depths[key.decode()] = int(client.llen(key))
    return dict(sorted(depths.items()))


def _dicom_results(settings: Settings) -> dict[str, Any]:
    """SEGs of the PACS listener per delivery state, and the sends that keep failing (db/dicom_results.py)."""
    from sa2va_queue.db import dicom_results
    from sa2va_queue.db.session import session_scope

    with session_scope(settings.sqlalchemy_url) as session:
        summary = dicom_results.summary(session)
    return {"by_status": summary.by_status,
            "failing": [{"seg_sop_uid": uid, "attempts": n, "last_error": err} for uid, n, err in summary.failing]}


def _print_dicom_results(console: Console, data: dict[str, Any]) -> None:
    if not data["by_status"]:
        return
    counts = ", ".join(f"{n} {state}" for state, n in sorted(data["by_status"].items()))
    console.print(f"DICOM results (SEGs): {counts}")
    for item in data["failing"]:
        console.print(f"[yellow]SEG {item['seg_sop_uid']} not delivered after {item['attempts']} attempt(s), "
                      f"retrying: {printable(item['last_error'] or '')}[/]")
