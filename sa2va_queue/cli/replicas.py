"""One worker process per GPU group: `--gpus 0,1,2,3 --gpus-per-replica 2` starts two replicas.

Each replica is a fresh interpreter (never a fork of a process that touched CUDA) started with
CUDA_VISIBLE_DEVICES set before anything imports torch, so it sees only its own GPUs; a model
spread over several GPUs is placed with a device map ("auto"). The supervisor forwards SIGTERM
and exits non-zero when a replica fails to load its model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from sa2va_queue.core.exceptions import ConfigError, ModelError


@dataclass(frozen=True)
class Replica:
    index: int
    gpus: tuple[int, ...]

    @property
    def device(self) -> str:
        return "auto" if len(self.gpus) > 1 else "cuda"

    @property
    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.gpus))}


def parse_gpus(text: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--gpus {text!r}: give GPU indices like 0,1,2,3") from None
    if not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise ConfigError(f"--gpus {text!r}: give distinct non-negative GPU indices like 0,1,2,3")
    return gpus


def plan_replicas(gpus: tuple[int, ...], per_replica: int) -> list[Replica]:
    if per_replica < 1 or len(gpus) % per_replica:
        raise ConfigError(
            f"--gpus-per-replica {per_replica} does not divide the {len(gpus)} GPUs given ({','.join(map(str, gpus))})"
        )
    return [Replica(i, gpus[i * per_replica:(i + 1) * per_replica]) for i in range(len(gpus) // per_replica)]


def supervise(replicas: list[Replica], argv: list[str], *, metrics_port: int, startup_grace_s: float = 5.0) -> int:
    """Run `sa2va-queue worker <argv>` once per replica; return the first non-zero exit code."""
    procs: list[subprocess.Popen[bytes]] = []
    for rep in replicas:
        args = [*argv, "--device", rep.device, "--replica-index", str(rep.index)]
        if metrics_port:
            args += ["--metrics-port", str(metrics_port + rep.index)]
        env = {**os.environ, **rep.env}
        procs.append(subprocess.Popen([sys.executable, "-m", "sa2va_queue.cli", "worker", *args], env=env))

    def forward(signum, _frame) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        codes = [proc.poll() for proc in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            forward(signal.SIGTERM, None)
            for proc in procs:
                proc.wait()
            raise ModelError(f"a worker replica exited with code {failed[0]}; the others were stopped (see its log above)")
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.5)
