"""Throughput and latency against the worker's max batch size. JSON lines on stdout.

Mode `queue`: the whole path. For each max batch size a real worker process (WorkerProcess, model
`sa2va:tiny...` by default) serves jobs registered and sent the way `sa2va-queue enqueue` does:
SQL row + Redis message -> worker -> micro-batch -> prediction + metrics rows. Offered load per
batch size: a closed burst (all jobs sent at once) and an open loop per --rates (one job every
1/rate s from a producer thread). Needs Redis and SQLite/PostgreSQL (and celery, sqlalchemy...).
Baseline in the same run: b=1, and the same model called in-process on the same frames.

Mode `model`: the sa2va backend alone (no queue, no database; imports neither celery, redis nor
sqlalchemy). For each batch size b: `preprocess` b images once, then time `predict` (warm-up first,
torch.cuda.synchronize on CUDA), R repeats. `--spec` takes any sa2va spec (default: the tiny
model); `--reference Sa2VA-4B` builds a real-size model from the package's reference config with
random weights (bf16 on CUDA), loaded the way the checkpoint loader places weights.

    python bench/batching.py queue                      # ~5 min on 2 CPU cores
    python bench/batching.py queue --database postgresql --batch-sizes 1,4,16 --rates 5,10
    python bench/batching.py model                      # tiny model, here
    python bench/batching.py model --reference Sa2VA-4B --device cuda   # on a GPU machine

One JSON object per measurement point, then one summary object ("summary": true).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The project must be installed (editable here; bench/gpu/run_queue.sh installs it on the GPU
# machine): its layers live in top-level folders mapped into sa2va_queue by pyproject.toml.

FORCE_ANSWER = "Sure, [SEG]."
DEFAULT_SPEC = f"sa2va:tiny?family=qwen2&force_answer={quote(FORCE_ANSWER, safe='')}"
DEFAULT_PROMPT = "Please segment the blood vessel."  # as sa2va_queue.core.settings.DEFAULT_PROMPT
HEAVY_MODULES = ("celery", "kombu", "redis", "sqlalchemy", "psycopg", "skimage", "scipy", "typer")


# ------------------------------------------------------------------------------------------ common
def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine() -> str:
    return f"{platform.node()} {platform.processor() or platform.machine()}"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def log(msg: str) -> None:
    print(f"[batching] {msg}", file=sys.stderr, flush=True)


def pct(values, q: float) -> float | None:
    arr = np.asarray(list(values), dtype=float)
    return round(float(np.percentile(arr, q)), 2) if arr.size else None


def int_list(text: str) -> list[int]:
    out = sorted({int(x) for x in text.split(",") if x.strip()})
    if not out or out[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers like 1,2,4,8")
    return out


def float_list(text: str) -> list[float]:
    out = [float(x) for x in text.split(",") if x.strip()]
    if any(r <= 0 for r in out):
        raise argparse.ArgumentTypeError(f"{text!r}: rates must be > 0 jobs/s")
    return out


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        out["transformers"] = None
    return out


def speedup_b8_over_b1(rate: dict[int, float]) -> float | None:
    if rate.get(1) and rate.get(8):
        return round(rate[8] / rate[1], 2)
    return None


# ------------------------------------------------------------------------------------------ model
def apply_transformers_compat(enabled: bool) -> list[str]:
    """The sa2va backend calls the language model with `cache=` and reads `out.cache` (the names of
    transformers >= the release that renamed `past_key_values`). On an older transformers (5.17:
    the GPU machine) that raises AttributeError. With `enabled`, patch Sa2VAForSegmentation._lm_step
    in this process only, passing `past_key_values=` instead; the patch is listed in every record."""
    import inspect

    import transformers
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen2 import modeling_qwen2

    has_cache = all(
        "cache" in inspect.signature(cls.forward).parameters
        for cls in (modeling_qwen2.Qwen2Model, modeling_llama.LlamaModel)
    )
    if has_cache:
        return []
    what = (f"transformers {transformers.__version__}: Qwen2Model/LlamaModel.forward take past_key_values, "
            "not cache; worker/backends/sa2va/modeling.py _lm_step needs the old name")
    if not enabled:
        log(f"WARNING {what}; --no-compat given, so predict will fail")
        return [f"unpatched: {what}"]
    from sa2va_queue.worker.backends.sa2va.modeling import Sa2VAForSegmentation

    def _lm_step(self, inputs_embeds, attention_mask, position_ids, past):
        out = self.language_model.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past, use_cache=True,
        )
        return out.last_hidden_state, out.past_key_values

    Sa2VAForSegmentation._lm_step = _lm_step
    log(f"compat patch applied: {what}")
    return [f"patched _lm_step: {what}"]


def _random_value(name: str, shape, dtype, device, gen):
    import torch

    if len(shape) >= 2:  # fan-in scaled, as tiny.build_tiny, so activations stay finite
        fan_in = int(np.prod(shape[1:]))
        return torch.randn(shape, generator=gen, device=device, dtype=dtype) * (1.0 / max(1, fan_in) ** 0.5)
    if name.endswith("weight") or "lambda" in name or "scale" in name:
        return torch.ones(shape, device=device, dtype=dtype)  # norms, layer scales
    return torch.zeros(shape, device=device, dtype=dtype)  # biases


def build_reference(name: str, device: str, dtype_name: str, *, seed: int, force_answer: str | None,
                    max_new_tokens: int, max_tiles: int, compile: bool = False):
    """A Sa2VAModel of a published shape with random weights, without any checkpoint folder.

    The package's own pieces: reference_official_config -> Sa2VAConfig, checkpoint.build_empty (meta
    parameters, real buffers), each state-dict tensor set on `device` in `dtype` with accelerate's
    set_module_tensor_to_device as checkpoint.load_weights_into does (tied lm_head likewise), the
    tiny BPE tokenizer (its ids fit any vocabulary; the text is a few tokens either way, the image
    tokens dominate), Sa2VAPipeline, and Sa2VAModel.predict on top (its setup() is skipped)."""
    import torch
    from accelerate.utils import set_module_tensor_to_device

    from sa2va_queue.core.modelspec import ModelSpec
    from sa2va_queue.worker.backends.sa2va.backend import Sa2VAModel
    from sa2va_queue.worker.backends.sa2va.checkpoint import build_empty, parse_dtype
    from sa2va_queue.worker.backends.sa2va.config import Sa2VAConfig, reference_official_config
    from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline
    from sa2va_queue.worker.backends.sa2va.tiny import build_tiny_tokenizer

    dtype = parse_dtype(dtype_name)
    config = Sa2VAConfig.from_official(reference_official_config(name), name)
    # build_empty's real buffers (SAM2's random Fourier matrix) draw from the global generator: seeded,
    # the same folder comes out of every process (unseeded, a second write differed in that buffer)
    torch.manual_seed(seed)
    model = build_empty(config)
    tied = config.tie_word_embeddings
    gen = torch.Generator(device=device).manual_seed(seed)
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers())
    for key in model.state_dict():
        if tied and key == "language_model.lm_head.weight":
            continue
        if key in params:
            p = params[key]
            value = _random_value(key, tuple(p.shape), dtype if p.is_floating_point() else p.dtype, device, gen)
        else:
            b = buffers[key]
            value = b.to(device, dtype if b.is_floating_point() else b.dtype)
        # dtype given, as the loader does: without it accelerate casts to the meta tensor's fp32
        set_module_tensor_to_device(model, key, device, value=value,
                                    dtype=value.dtype if value.is_floating_point() else None)
    if tied:
        lm = model.language_model
        lm.lm_head.weight = lm.model.embed_tokens.weight
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if on_meta:
        raise RuntimeError(f"reference build left {len(on_meta)} tensors on meta: {on_meta[:5]}")
    model.eval()
    tokenizer = build_tiny_tokenizer(config.family)
    options = {"family": config.family, "dtype": dtype_name, "max_new_tokens": str(max_new_tokens),
               "max_tiles": str(max_tiles)}
    if force_answer is not None:
        options["force_answer"] = force_answer
    backend = Sa2VAModel(ModelSpec(name="sa2va", path="tiny", options=options))
    backend.pipeline = Sa2VAPipeline(model, tokenizer, config, max_new_tokens=max_new_tokens, max_tiles=max_tiles,
                                     force_answer=force_answer, compile_sam=compile, compile_llm=compile)
    spent = backend.pipeline.warmup()  # as Sa2VAModel.setup: compiles now (compile on CUDA)
    if spent:
        log(f"compiled in {spent:.1f} s")
    return backend


def load_images(n: int, size: int, folder: str | None, seed: int = 0) -> list[np.ndarray]:
    """`n` uint8 RGB images: from `folder` (cycled) or random noise of size x size."""
    if folder:
        from PIL import Image

        files = sorted(p for p in Path(folder).rglob("*")
                       if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
        if not files:
            raise SystemExit(f"--images {folder}: no image files")
        out = []
        for i in range(n):
            with Image.open(files[i % len(files)]) as im:
                out.append(np.asarray(im.convert("RGB")))
        return out
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


STAGES = ("extract_feature", "generate", "sam_image_features", "language_embeddings", "sam_decode")


def stage_breakdown(backend, batch: list, cuda: bool, repeats: int) -> dict:
    """Mean ms per stage of one predict: the model's methods that Sa2VAPipeline.run calls, each
    wrapped (on this instance only, removed afterwards) with a synchronised timer; `other` is the
    rest (tensor gathering, upsampling to the frame size, copies to the host, thresholding)."""
    model = backend.pipeline.model
    acc: dict[str, float] = {s: 0.0 for s in STAGES}

    def timed(name, fn):
        def wrapper(*a, **k):
            _sync(cuda)
            t = time.perf_counter()
            out = fn(*a, **k)
            _sync(cuda)
            acc[name] += time.perf_counter() - t
            return out
        return wrapper

    for name in STAGES:
        setattr(model, name, timed(name, getattr(model, name)))
    total = 0.0
    try:
        for _ in range(repeats):
            _sync(cuda)
            t = time.perf_counter()
            backend.predict(batch)
            _sync(cuda)
            total += time.perf_counter() - t
    finally:
        for name in STAGES:
            delattr(model, name)
    out = {("vision" if s == "extract_feature" else "llm_generate" if s == "generate" else s):
           round(v * 1000 / repeats, 2) for s, v in acc.items()}
    out["other"] = round((total - sum(acc.values())) * 1000 / repeats, 2)
    out["total"] = round(total * 1000 / repeats, 2)
    return out


def model_sweep(backend, prepared: list, batch_sizes: list[int], *, repeats: int, warmup: int, cuda: bool,
                base: dict, emit_points: bool = True, breakdown: int = 0) -> list[dict]:
    """Time backend.predict on the first b prepared inputs for each b; one record per b."""
    import torch

    results: list[dict] = []
    ips1: float | None = None
    weights_mib = round(torch.cuda.memory_allocated() / 2**20, 1) if cuda else None
    for b in batch_sizes:
        batch = prepared[:b]
        rec = {**base, "batch_size": b, "warmup": warmup, "repeats": repeats}
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            for _ in range(warmup):
                backend.predict(batch)
            _sync(cuda)
            times = []
            for _ in range(repeats):
                _sync(cuda)
                t = time.perf_counter()
                out = backend.predict(batch)
                _sync(cuda)
                times.append(time.perf_counter() - t)
        except Exception as exc:  # out of memory: record it, larger batches will not fit either
            from sa2va_queue.worker.batcher import is_out_of_memory

            if not is_out_of_memory(exc):
                raise
            rec.update(oom=True, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            if cuda:
                rec["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                torch.cuda.empty_cache()
            results.append(rec)
            if emit_points:
                emit(rec)
            break
        ms = np.array(times) * 1000.0
        ips = float(b / (ms.mean() / 1000.0))
        if b == 1:
            ips1 = ips
        rec.update(
            ms_per_batch={"mean": round(float(ms.mean()), 2), "p50": pct(ms, 50), "p95": pct(ms, 95),
                          "min": round(float(ms.min()), 2)},
            images_per_s=round(ips, 3),
            ms_per_image=round(float(ms.mean()) / b, 2),
            speedup_vs_b1=round(ips / ips1, 2) if ips1 else None,
            no_segmentation=sum(1 for r in out if r.no_segmentation),
            answer=out[0].text,
        )
        if breakdown:
            rec["stages_ms"] = stage_breakdown(backend, batch, cuda, breakdown)
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2**20
            rec.update(peak_mem_mib=round(peak, 1), weights_mib=weights_mib,
                       activation_mib=round(peak - (weights_mib or 0.0), 1))
        results.append(rec)
        if emit_points:
            emit(rec)
    return results


def model_mode(args) -> None:
    t_start = time.perf_counter()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "auto" and args.reference:
        raise SystemExit("--reference builds on one device: give --device cuda or cpu")
    batch_sizes = sorted(set(args.batch_sizes) | {1})  # b=1 is the baseline of every speed-up
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    repeats = max(1, args.repeats or (10 if cuda else 3))
    warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    compat = apply_transformers_compat(not args.no_compat)

    t = time.perf_counter()
    if args.reference:
        dtype = args.dtype or ("bf16" if cuda else "fp32")
        force = None if args.no_force_answer else args.force_answer
        backend = build_reference(args.reference, device, dtype, seed=args.seed, force_answer=force,
                                  max_new_tokens=args.max_new_tokens, max_tiles=args.max_tiles, compile=args.compile)
        model_name = f"reference:{args.reference} (random weights)"
    else:
        from sa2va_queue.worker.backends import build_model

        backend = build_model(args.spec)
        backend.setup(device, compile=args.compile)
        model_name = str(backend.spec)
        dtype = backend.dtype_name
    build_s = time.perf_counter() - t
    pipe = backend.pipeline
    n_params = sum(p.numel() for p in pipe.model.parameters())
    param_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in pipe.model.parameters()})
    log(f"{model_name}: {n_params / 1e9:.3f} B parameters, built in {build_s:.1f} s on {device}")

    from sa2va_queue.worker.backends.base import SegmentationRequest

    images = load_images(max(batch_sizes), args.size, args.images, args.seed)
    t = time.perf_counter()
    prepared = [backend.preprocess(SegmentationRequest(f"img{i}", im, args.prompt)) for i, im in enumerate(images)]
    preprocess_ms = (time.perf_counter() - t) * 1000.0 / len(prepared)

    if cuda:
        dev_name = f"{device} {torch.cuda.get_device_name(torch.cuda.current_device())}"
    else:
        dev_name = f"cpu ({torch.get_num_threads()} threads)"
    base = {
        "benchmark": "batching", "mode": "model", "date": now_iso(), "machine": machine(),
        "cpu_count": os.cpu_count(), "device": dev_name, **versions(), "model": model_name, "dtype": dtype,
        "parameters": n_params, "param_dtypes": param_dtypes, "image_size": list(images[0].shape[:2]),
        "tiles_per_image": int(prepared[0].pixel_values.shape[0]), "prompt_tokens": len(prepared[0].input_ids),
        "answer_tokens": len(pipe.forced_ids) if pipe.forced_ids is not None else None,
        "compat": compat,
    }
    if cuda:  # one untimed pass: CUDA context, cuBLAS handles, allocator
        backend.predict(prepared[:1])
        _sync(cuda)
    results = model_sweep(backend, prepared, batch_sizes, repeats=repeats, warmup=warmup, cuda=cuda, base=base,
                          breakdown=args.breakdown)
    ok = [r for r in results if "images_per_s" in r]
    rate = {r["batch_size"]: r["images_per_s"] for r in ok}
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
    summary = {
        "benchmark": "batching", "mode": "model", "summary": True, "date": now_iso(), "machine": machine(),
        "device": dev_name, **versions(), "model": model_name, "dtype": dtype, "parameters": n_params,
        "param_dtypes": param_dtypes, "image_size": base["image_size"], "tiles_per_image": base["tiles_per_image"],
        "repeats": repeats, "warmup": warmup,
        "best_batch_size": best["batch_size"] if best else None,
        "best_images_per_s": best["images_per_s"] if best else None,
        "speedup_b8_over_b1": speedup_b8_over_b1(rate),
        "images_per_s": {str(b): v for b, v in rate.items()},
        "ms_per_batch_p50": {str(r["batch_size"]): r["ms_per_batch"]["p50"] for r in ok},
        "speedup_vs_b1": {str(r["batch_size"]): r["speedup_vs_b1"] for r in ok},
        "stages_ms": {str(r["batch_size"]): r["stages_ms"] for r in ok if "stages_ms" in r} or None,
        "oom_at": next((r["batch_size"] for r in results if r.get("oom")), None),
        "preprocess_ms_per_image": round(preprocess_ms, 2),
        "build_s": round(build_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "heavy_modules_imported": [m for m in HEAVY_MODULES if m in sys.modules],
        "compat": compat,
    }
    if cuda:
        summary["peak_mem_mib"] = {str(r["batch_size"]): r.get("peak_mem_mib") for r in results}
    emit(summary)


# ------------------------------------------------------------------------------------------ queue
def database_url(kind: str, tmp: Path, pg_admin: str):
    """(SQLAlchemy url, cleanup): SQLite in `tmp`, or a scratch PostgreSQL database."""
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench.sqlite'}", lambda: None
    from sa2va_queue.db.scratch import scratch_postgres

    scratch = scratch_postgres(pg_admin, "sa2va_bench")
    return scratch.__enter__(), lambda: scratch.__exit__(None, None, None)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class QueueBench:
    """One database and Redis db for the whole sweep; one worker process per max batch size."""

    def __init__(self, args, tmp: Path, db_url: str, frames: list) -> None:
        self.args = args
        self.tmp = tmp
        self.db_url = db_url
        self.frames = frames
        self.spec = args.spec

    def settings(self, b: int):
        from sa2va_queue.core.settings import Settings

        return Settings.load(environ={}, data_dir=self.tmp / "data", broker_url=self.args.redis_url,
                             database_url=self.db_url, max_batch_size=b, max_queue_delay_ms=self.args.delay_ms,
                             metrics_port=0)

    def store(self, settings):
        from sa2va_queue.db.blobs import BlobStore
        from sa2va_queue.db.jobstore import JobStore

        return JobStore(self.db_url, BlobStore(settings.blob_dir))

    def register(self, settings, name: str, n: int, queue: str) -> tuple[int, list[str]]:
        """Store n frames as a run of the worker's model version, not yet sent."""
        from sa2va_queue.core.modelspec import ModelSpec
        from sa2va_queue.producer.enqueue import open_run, to_new_job

        store = self.store(settings)
        run = open_run(store, name=name, spec=ModelSpec.parse(self.spec), dataset="synthetic", prompt=settings.prompt)
        reg = store.register(run, [to_new_job(f) for f in self.frames[:n]], queue=queue)
        return run.id, list(reg.to_send)

    def finished(self, settings, run_id: int) -> int:
        from sa2va_queue.db.models import FINAL_STATUSES

        final = {s.value for s in FINAL_STATUSES}
        return sum(n for status, n in self.store(settings).run_counts(run_id).items() if status in final)

    def point(self, app, settings, queue: str, b: int, load: str, rate: float | None, n: int) -> dict:
        """Register n jobs as a run of their own, offer them, wait until all are final, measure."""
        from sqlalchemy import select

        from sa2va_queue.core.broker import publish
        from sa2va_queue.db.models import Job, Metrics, Prediction
        from sa2va_queue.db.session import session_scope

        run_id, ids = self.register(settings, f"batching-b{b}-{load}-{uuid.uuid4().hex[:6]}", n, queue)
        store = self.store(settings)

        def send(job_ids: list[str]) -> None:  # as the producer does: queued in SQL, then the messages
            store.mark_sent(job_ids)
            publish(app, job_ids, queue)

        lags: list[float] = []
        errors: list[str] = []
        t0 = time.perf_counter()
        if rate is None:
            send(ids)
            sender = None
        else:
            def send_spaced() -> None:  # open loop: the schedule does not wait for the worker
                try:
                    for i, job_id in enumerate(ids):
                        delay = t0 + i / rate - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                        lags.append(max(0.0, -delay) * 1000.0)
                        send([job_id])
                except Exception as exc:  # pragma: no cover - reported in the record
                    errors.append(f"{type(exc).__name__}: {exc}")

            sender = threading.Thread(target=send_spaced, name="open-loop-producer", daemon=True)
            sender.start()
        deadline = t0 + self.args.point_timeout
        done = 0
        while time.perf_counter() < deadline:
            done = self.finished(settings, run_id)
            if done >= n or errors:
                break
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        if sender is not None:
            sender.join(timeout=5)
        with session_scope(self.db_url) as session:
            rows = session.execute(
                select(Job.status, Job.enqueued_at, Job.started_at, Job.finished_at, Prediction.batch_size,
                       Prediction.compute_ms, Prediction.preprocess_ms, Metrics.pred_fraction)
                .outerjoin(Prediction, Prediction.job_id == Job.id)
                .outerjoin(Metrics, Metrics.job_id == Job.id)
                .where(Job.run_id == run_id)
            ).all()
        fin = [r for r in rows if r.finished_at is not None and r.enqueued_at is not None]
        e2e = [(_aware(r.finished_at) - _aware(r.enqueued_at)).total_seconds() * 1000 for r in fin]
        wait = [(_aware(r.started_at) - _aware(r.enqueued_at)).total_seconds() * 1000 for r in fin if r.started_at]
        pred = [r for r in rows if r.batch_size]
        inv = sum(1.0 / r.batch_size for r in pred)  # each batch of k contributes k rows of 1/k
        span = None
        if fin:
            span = (max(_aware(r.finished_at) for r in fin) - min(_aware(r.enqueued_at) for r in fin)).total_seconds()
        statuses: dict[str, int] = {}
        for r in rows:
            key = getattr(r.status, "value", str(r.status))
            statuses[key] = statuses.get(key, 0) + 1
        return {
            "load": load,
            "offered_rate_jobs_per_s": rate,
            "jobs": n,
            "finished": len(fin),
            "statuses": statuses,
            "timed_out": done < n,
            "wall_s": round(wall, 3),
            "span_s": round(span, 3) if span else None,
            "throughput_jobs_per_s": round(len(fin) / span, 2) if span else None,
            "end_to_end_ms": {"p50": pct(e2e, 50), "p95": pct(e2e, 95), "max": pct(e2e, 100),
                              "mean": round(float(np.mean(e2e)), 2) if e2e else None},
            "queue_wait_ms": {"p50": pct(wait, 50), "p95": pct(wait, 95)},
            "batches": round(inv) if pred else 0,
            "mean_batch_size": round(len(pred) / inv, 2) if pred else None,
            "mean_batch_size_per_job": round(float(np.mean([r.batch_size for r in pred])), 2) if pred else None,
            "max_batch_formed": max((r.batch_size for r in pred), default=None),
            "compute_ms_per_batch": round(sum(r.compute_ms / r.batch_size for r in pred) / inv, 2) if pred else None,
            "compute_ms_per_image": round(float(np.mean([r.compute_ms / r.batch_size for r in pred])), 2)
            if pred else None,
            "preprocess_ms_per_job": round(float(np.mean([r.preprocess_ms for r in pred])), 2) if pred else None,
            # foreground share of the predicted masks: the metrics step (clDice skeletons) costs far
            # more on the tiny random model's near-full masks than on vessel-like ones
            "mean_pred_fraction": round(float(np.mean(fracs)), 3) if (fracs := [r.pred_fraction for r in rows
                                                                               if r.pred_fraction is not None]) else None,
            "send_lag_ms": {"p95": pct(lags, 95), "max": pct(lags, 100)} if rate is not None else None,
            "sender_errors": errors or None,
        }

    def sweep_batch_size(self, b: int, base: dict, in_process: dict[int, float]) -> list[dict]:
        from sa2va_queue.cli.local_worker import WorkerProcess
        from sa2va_queue.core.broker import make_celery, queue_names
        from sa2va_queue.core.modelspec import ModelSpec

        settings = self.settings(b)
        app = make_celery(settings)
        # the bulk queue of this model version, as `enqueue` uses for evaluation runs
        _, queue = queue_names(ModelSpec.parse(self.spec))
        extra = ["--device", self.args.device]
        if self.args.concurrency:
            extra += ["--concurrency", str(self.args.concurrency)]
        threads = self.args.concurrency or max(4, 4 * b)  # as `sa2va-queue worker` defaults
        t = time.perf_counter()
        worker = WorkerProcess(settings, self.spec, log_path=self.tmp / f"worker-b{b}.log",
                               extra_args=extra).start(app, timeout=300)
        start_s = time.perf_counter() - t
        out = []
        try:
            if self.args.warmup_jobs:
                self.point(app, settings, queue, b, "warmup", None, min(self.args.warmup_jobs, len(self.frames)))
            loads: list[tuple[str, float | None]] = [("burst", None)] + [("open", r) for r in self.args.rates]
            for load, rate in loads:
                rec = {**base, "date": now_iso(), "max_batch_size": b, "worker_threads": threads,
                       "worker_start_s": round(start_s, 1),
                       **self.point(app, settings, queue, b, load, rate, self.args.jobs)}
                if b in in_process:
                    rec["in_process_images_per_s"] = in_process[b]
                out.append(rec)
                if not worker.alive():
                    rec["error"] = f"worker died: {worker.log_tail()}"
                    emit(rec)
                    break
                emit(rec)
        finally:
            worker.stop()
            app.close()
        return out


def in_process_baseline(args, frames: list) -> dict[int, float]:
    """The same backend, same frames (decoded as the worker does), predict timed in this process."""
    from sa2va_queue.core.imaging import decode_image
    from sa2va_queue.worker.backends import build_model
    from sa2va_queue.worker.backends.base import SegmentationRequest

    backend = build_model(args.spec)
    backend.setup(args.device)
    images = [decode_image(f.data, f.name) for f in frames[: max(args.batch_sizes)]]
    prepared = [backend.preprocess(SegmentationRequest(f"f{i}", im, DEFAULT_PROMPT)) for i, im in enumerate(images)]
    cuda = args.device != "cpu"
    if cuda:
        backend.predict(prepared[:1])
    res = model_sweep(backend, prepared, sorted(set(args.batch_sizes) | {1}), repeats=args.in_process_repeats,
                      warmup=1, cuda=cuda, base={}, emit_points=False)
    return {r["batch_size"]: r["images_per_s"] for r in res if "images_per_s" in r}


def queue_mode(args) -> None:
    t_start = time.perf_counter()
    import redis

    from sa2va_queue.db.session import dispose_all, upgrade_schema
    from sa2va_queue.producer import synth
    from sa2va_queue.producer.dataset import scan_dataset

    tmp = Path(tempfile.mkdtemp(prefix="sa2va-batching-"))
    log(f"work dir {tmp} (worker logs; removed at the end unless --keep-tmp or a failure)")
    n_frames = max(args.jobs, args.warmup_jobs)
    synth.generate(tmp / "frames", n_frames, seed=0, size=args.size)
    frames = [f for f in scan_dataset(tmp / "frames").frames if f.error is None]
    if len(frames) < n_frames:
        raise SystemExit(f"only {len(frames)} usable synthetic frames of {n_frames}")
    in_process: dict[int, float] = {}
    if not args.no_in_process:
        t = time.perf_counter()
        in_process = in_process_baseline(args, frames)
        log(f"in-process baseline {in_process} in {time.perf_counter() - t:.1f} s")
    db_url, drop = database_url(args.database, tmp, args.pg_admin)
    results: list[dict] = []
    try:
        upgrade_schema(db_url)
        redis.Redis.from_url(args.redis_url).flushdb()
        bench = QueueBench(args, tmp, db_url, frames)
        base = {"benchmark": "batching", "mode": "queue", "machine": machine(), "cpu_count": os.cpu_count(),
                "database": args.database, "model": args.spec, "device": args.device, "image_size": args.size,
                "max_queue_delay_ms": args.delay_ms}
        for b in args.batch_sizes:
            log(f"max batch size {b}")
            results += bench.sweep_batch_size(b, base, in_process)
        redis.Redis.from_url(args.redis_url).flushdb()
    finally:
        dispose_all()
        drop()
    if not args.keep_tmp and not any(r["timed_out"] or r.get("error") for r in results):
        shutil.rmtree(tmp, ignore_errors=True)
    # speed-up over b=1 under the same load, now that all points are in
    by_load: dict[tuple, dict[int, dict]] = {}
    for r in results:
        by_load.setdefault((r["load"], r["offered_rate_jobs_per_s"]), {})[r["max_batch_size"]] = r
    burst = by_load.get(("burst", None), {})
    tput = {b: r["throughput_jobs_per_s"] for b, r in burst.items() if r["throughput_jobs_per_s"]}
    best = max(tput, key=tput.get) if tput else None
    open_loop = {}
    for (load, rate), pts in by_load.items():
        if load != "open":
            continue
        p95 = {b: r["end_to_end_ms"]["p95"] for b, r in pts.items() if r["end_to_end_ms"]["p95"] is not None}
        open_loop[str(rate)] = {
            "p50_ms": {str(b): r["end_to_end_ms"]["p50"] for b, r in pts.items()},
            "p95_ms": {str(b): v for b, v in p95.items()},
            "achieved_jobs_per_s": {str(b): r["throughput_jobs_per_s"] for b, r in pts.items()},
            "mean_batch_size": {str(b): r["mean_batch_size"] for b, r in pts.items()},
            "best_batch_size_p95": min(p95, key=p95.get) if p95 else None,
        }
    summary = {
        "benchmark": "batching", "mode": "queue", "summary": True, "date": now_iso(), "machine": machine(),
        "cpu_count": os.cpu_count(), "database": args.database, "model": args.spec, "device": args.device,
        "jobs_per_point": args.jobs, "image_size": args.size, "max_queue_delay_ms": args.delay_ms,
        "batch_sizes": args.batch_sizes, "rates": args.rates,
        "best_batch_size_burst": best,
        "burst_jobs_per_s": {str(b): v for b, v in tput.items()},
        "speedup_b8_over_b1_burst": speedup_b8_over_b1(tput),
        "speedup_vs_b1_burst": {str(b): round(v / tput[1], 2) for b, v in tput.items()} if tput.get(1) else None,
        "burst_p95_ms": {str(b): r["end_to_end_ms"]["p95"] for b, r in burst.items()},
        "burst_mean_batch_size": {str(b): r["mean_batch_size"] for b, r in burst.items()},
        "burst_compute_ms_per_batch": {str(b): r["compute_ms_per_batch"] for b, r in burst.items()},
        "open_loop": open_loop,
        "in_process_images_per_s": {str(b): v for b, v in in_process.items()} or None,
        "in_process_speedup_b8_over_b1": speedup_b8_over_b1(in_process),
        "timed_out_points": sum(1 for r in results if r["timed_out"]),
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    emit(summary)


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)

    q = sub.add_parser("queue", help="whole path: real worker process, Redis, SQL")
    q.add_argument("--batch-sizes", type=int_list, default=[1, 2, 4, 8, 16, 32], help="max batch sizes (default 1,2,4,8,16,32)")
    q.add_argument("--jobs", type=int, default=64, help="jobs per measurement point (default 64)")
    q.add_argument("--rates", type=float_list, default=[4.0, 8.0],
                   help="open-loop offered loads, jobs/s, comma separated (default 4,8; '' = burst only)")
    q.add_argument("--delay-ms", type=float, default=10.0, help="SA2VA_MAX_QUEUE_DELAY_MS (default 10)")
    q.add_argument("--spec", default=DEFAULT_SPEC, help=f"worker model spec (default {DEFAULT_SPEC})")
    q.add_argument("--device", default="cpu", help="worker --device (cpu, cuda, auto)")
    q.add_argument("--concurrency", type=int, default=None, help="worker job threads (default 4 x batch size, at least 4)")
    q.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    q.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/test",
                   help="PostgreSQL url to create/drop the temporary database with")
    q.add_argument("--redis-url", default="redis://127.0.0.1:6379/9", help="Redis db for the run (flushed)")
    q.add_argument("--size", type=int, default=512, help="synthetic frame side in px (default 512)")
    q.add_argument("--warmup-jobs", type=int, default=8, help="untimed jobs per worker before measuring")
    q.add_argument("--point-timeout", type=float, default=300.0, help="seconds per measurement point")
    q.add_argument("--no-in-process", action="store_true", help="skip the in-process predict baseline")
    q.add_argument("--in-process-repeats", type=int, default=3)
    q.add_argument("--keep-tmp", action="store_true", help="keep the work dir (frames, SQLite, worker logs)")

    m = sub.add_parser("model", help="the sa2va backend alone: preprocess once, time predict")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--spec", default=DEFAULT_SPEC, help="sa2va model spec (default the tiny model)")
    src.add_argument("--reference", default=None,
                     help="real-size random model from the package's reference config, e.g. Sa2VA-1B, Sa2VA-4B")
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:N, or auto (--spec only); default cuda if any")
    m.add_argument("--dtype", default=None, help="--reference only: bf16 | fp16 | fp32 (default bf16 on cuda)")
    m.add_argument("--batch-sizes", type=int_list, default=[1, 2, 4, 8, 16, 32])
    m.add_argument("--repeats", type=int, default=None, help="timed runs per batch size (default 10 cuda, 3 cpu)")
    m.add_argument("--warmup", type=int, default=None, help="untimed runs per batch size (default 2 cuda, 1 cpu)")
    m.add_argument("--size", type=int, default=512, help="random image side in px (default 512)")
    m.add_argument("--images", default=None, help="folder of real frames to use instead of random images")
    m.add_argument("--prompt", default=DEFAULT_PROMPT)
    m.add_argument("--force-answer", default=FORCE_ANSWER,
                   help="--reference only: scripted answer (random weights would babble to max_new_tokens)")
    m.add_argument("--no-force-answer", action="store_true", help="--reference only: greedy decoding")
    m.add_argument("--max-new-tokens", type=int, default=2048, help="--reference only")
    m.add_argument("--max-tiles", type=int, default=12, help="--reference only")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--breakdown", type=int, default=0, metavar="N",
                   help="also time each stage (vision, LLM, SAM2 encoder/decoder, other) over N extra runs per b")
    m.add_argument("--compile", action="store_true",
                   help="torch.compile on CUDA before timing, as `worker` with SA2VA_COMPILE=1")
    m.add_argument("--no-compat", action="store_true",
                   help="do not patch the LM cache call for transformers versions that lack `cache=`")

    args = parser.parse_args(argv)
    if args.mode == "queue":
        if args.jobs < 1:
            parser.error("--jobs must be >= 1")
        queue_mode(args)
    else:
        model_mode(args)


if __name__ == "__main__":
    main()
