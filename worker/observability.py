"""Prometheus metrics of one worker process, served on SA2VA_METRICS_HOST:SA2VA_METRICS_PORT (+ replica index)."""

from __future__ import annotations

import logging
import sys

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram("sa2va_batch_size", "Jobs per model batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.queue_wait = Histogram("sa2va_queue_wait_seconds", "Enqueued to claimed by this worker", buckets=_SECONDS, registry=r)
        self.preprocess = Histogram("sa2va_preprocess_seconds", "Decode and preprocess per job", buckets=_SECONDS, registry=r)
        self.compute = Histogram("sa2va_batch_compute_seconds", "Model time per batch", buckets=_SECONDS, registry=r)
        self.jobs = Counter("sa2va_jobs_total", "Jobs by final state", ["status"], registry=r)
        self.in_flight = Gauge("sa2va_jobs_in_flight", "Jobs this worker holds: claimed, not yet stored", registry=r)
        self.end_to_end = Histogram("sa2va_end_to_end_seconds", "Enqueued to stored, per job",
                                    buckets=_SECONDS + (900, 1800, 3600), registry=r)
        self.model = Info("sa2va_model", "The model version this worker serves and where it runs", registry=r)
        # process (CPU, memory, file descriptors) and Python (version, garbage collection) metrics
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        if GC_COLLECTOR is not None:
            GCCollector(registry=r)
        r.register(_GpuMemory())

    def observe_batch(self, size: int, compute_ms: float) -> None:
        self.batch_size.observe(size)
        self.compute.observe(compute_ms / 1000.0)

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Serve /metrics on host:port (SA2VA_METRICS_HOST, loopback unless configured: the endpoint
        has no authentication). Returns the HTTP server (its `server_address` is what was bound)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("Prometheus metrics on %s:%d/metrics", host, port)
        return server


class _GpuMemory:
    """GPU memory per visible device, read at scrape time (nothing when torch/CUDA is absent)."""

    def collect(self):
        allocated = GaugeMetricFamily("sa2va_gpu_memory_allocated_bytes", "torch allocated memory", labels=["device"])
        reserved = GaugeMetricFamily("sa2va_gpu_memory_reserved_bytes", "torch reserved memory", labels=["device"])
        torch = sys.modules.get("torch")  # never import torch just to report on it
        if torch is not None and torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                allocated.add_metric([str(i)], float(torch.cuda.memory_allocated(i)))
                reserved.add_metric([str(i)], float(torch.cuda.memory_reserved(i)))
        yield allocated
        yield reserved
