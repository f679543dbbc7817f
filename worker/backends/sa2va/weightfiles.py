"""The weight files of an official-layout Sa2VA folder and the checkpoint hash (the model version).
No torch here: the worker command starts the hash before it imports torch (`start_folder_hash`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import Future
from pathlib import Path

from sa2va_queue.core.exceptions import ModelError

_STARTED: dict[tuple, Future] = {}  # (folder, its files' names, sizes, mtimes) -> hash
_STARTED_LOCK = threading.Lock()


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a HF folder, in a fixed order; ModelError if there are none."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                wm = json.loads(index.read_text())["weight_map"]
            except (OSError, KeyError, json.JSONDecodeError) as exc:
                raise ModelError(f"{index}: unreadable index ({exc})") from None
            files = sorted({folder / f for f in wm.values()})
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise ModelError(f"{index} names missing shard(s): {', '.join(absent)}")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        return shards
    raise ModelError(
        f"{folder}: no weights (looked for model.safetensors, model.safetensors.index.json, *.safetensors, "
        "pytorch_model.bin)"
    )


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_hash(folder: str | Path) -> str:
    """sha256 of manifest.json: the model version of a converted folder."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise ModelError(f"{folder}: no manifest.json")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_hash(folder: str | Path, files: list[Path] | None = None) -> str:
    """manifest hash when the folder has one, else sha256 over (name, size, sha256) of each weight
    file (`files`: weight_files(folder), when the caller has it already)."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        return manifest_hash(folder)
    files = weight_files(folder) if files is None else files
    h = hashlib.sha256()
    for f, d in zip(files, _hash_digests(files)):
        h.update(f"{f.name}\0{f.stat().st_size}\0{d}\n".encode())
    return h.hexdigest()


def _hash_digests(files: list[Path]) -> list[str]:
    """sha256 of each file, files dealt round-robin to threads (hashlib releases the GIL on large
    blocks). Daemon threads: a worker whose load failed exits without waiting for a hash it no
    longer needs."""
    digests: list[str | BaseException] = [""] * len(files)
    n_threads = max(1, min(len(files), os.cpu_count() or 1))

    def work(first: int) -> None:
        for i in range(first, len(files), n_threads):
            try:
                digests[i] = sha256_file(files[i])
            except BaseException as exc:  # raised again in the caller's thread
                digests[i] = exc

    threads = [threading.Thread(target=work, args=(k,), name=f"sa2va-hash-{k}", daemon=True)
               for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d in digests:
        if isinstance(d, BaseException):
            raise d
    return digests  # type: ignore[return-value]


def start_folder_hash(folder: str | Path) -> Future:
    """`folder_hash` on a daemon thread. The worker starts it before its imports and the model
    load: on a cold page cache its sequential reads run while Python imports torch and builds the
    meta model, and the loader then finds those pages cached (each page comes from disk once).
    A second call for the same files (path, sizes, modification times) gets the same Future."""
    folder = Path(folder).resolve()
    try:
        files = weight_files(folder)
        stats = [(f.name, f.stat()) for f in files + [p for p in (folder / "manifest.json",) if p.is_file()]]
        key = (folder, tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    except (ModelError, OSError) as exc:
        failed: Future = Future()
        failed.set_exception(exc)
        return failed
    with _STARTED_LOCK:
        if key in _STARTED:
            return _STARTED[key]
        done: Future = Future()
        _STARTED[key] = done

    def work() -> None:
        try:
            done.set_result(folder_hash(folder, files))
        except BaseException as exc:
            with _STARTED_LOCK:
                _STARTED.pop(key, None)
            done.set_exception(exc)

    threading.Thread(target=work, name="sa2va-hash", daemon=True).start()
    return done
