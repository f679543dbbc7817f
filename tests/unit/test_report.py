"""Report end to end on a SQLite database: collect, summarize, figures, Markdown / HTML / JSON."""

from __future__ import annotations

import io
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from rich.console import Console
from scipy import ndimage
from skimage.draw import line
from sqlalchemy import select

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import Blob, Image, Job, JobStatus, Metrics, ModelVersion, Prediction, Run
from sa2va_queue.db.session import dispose_all, get_sessionmaker, upgrade_schema
from sa2va_queue.core.exceptions import NotFound
from sa2va_queue.core.imaging import encode_mask, encode_probability
from sa2va_queue.core.metrics import compute_metrics
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.db.calibrations import latest_calibration, source_text
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.report.calibrate import calibrate_run
from sa2va_queue.report.collect import load_run
from sa2va_queue.report.drawing import FigurePool
from sa2va_queue.report.figures import case_figure
from sa2va_queue.report.render import _collect
from sa2va_queue.report.summarize import build_report
from sa2va_queue.report.summarize import summary_table

PATIENTS = ("PAT123", "PAT456", "PAT789")
PSEUDO = Pseudonymizer(b"report-test-key-0123456789")
SHAPE = (48, 48)
T0 = datetime(2026, 1, 5, 9, 0, 0, tzinfo=timezone.utc)


def frame_name(i: int) -> str:
    return f"{PATIENTS[i % 3]}__1-4_1_0A0B0C0D_frame_{i:06d}.jpg"


def vessels(rng: np.random.Generator) -> np.ndarray:
    """A few thick random line segments: a crude vessel tree."""
    m = np.zeros(SHAPE, bool)
    for _ in range(3):
        r0, c0, r1, c1 = rng.integers(2, SHAPE[0] - 2, 4)
        rr, cc = line(r0, c0, r1, c1)
        m[rr, cc] = True
    return ndimage.binary_dilation(m, iterations=int(rng.integers(1, 3)))


def image_bytes(gt: np.ndarray, rng: np.random.Generator) -> bytes:
    grey = np.clip(180 - 90 * gt + rng.normal(0, 12, SHAPE), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(grey).save(buf, format="PNG")
    return buf.getvalue()


class Builder:
    def __init__(self, session, blobs: BlobStore) -> None:
        self.s, self.blobs = session, blobs
        self.images: dict[str, tuple[int, np.ndarray]] = {}  # name -> (image id, gt)

    def put(self, data: bytes, media_type: str) -> str:
        (row,) = self.blobs.rows([(data, media_type)])
        self.s.merge(Blob(**row))  # the same bytes twice: one row
        return row["sha256"]

    def version(self, backend: str) -> ModelVersion:
        mv = ModelVersion(
            key=uuid.uuid4().hex, backend=backend, params={"sigma": 2}, checkpoint_hash="c" * 64, code_version="abc1234"
        )
        self.s.add(mv)
        self.s.flush()
        return mv

    def run(self, name: str, spec: str | None = None) -> Run:
        run = Run(name=name, model_spec=spec or f"spec-of-{name}", dataset="/data/set", prompt="Segment the vessel.",
                  threshold=0.5, created_at=T0)
        self.s.add(run)
        self.s.flush()
        return run

    def frame(self, run: Run, mv: ModelVersion, i: int, rng: np.random.Generator, *, mode: str = "noisy") -> None:
        name = frame_name(i)
        if name not in self.images:
            gt = vessels(rng)
            sha = self.put(image_bytes(gt, rng), "image/png")
            img = Image(sha256=sha, width=SHAPE[1], height=SHAPE[0], mode="L", media_type="image/png")
            self.s.add(img)
            self.s.flush()
            self.images[name] = (img.id, gt)
        image_id, gt = self.images[name]
        enq = T0 + timedelta(seconds=i)
        job = Job(id=str(uuid.uuid4()), run_id=run.id, name=name, image_id=image_id, prompt=run.prompt, queue="q",
                  status=JobStatus.done, attempts=1, worker="w1", enqueued_at=enq,
                  started_at=enq + timedelta(seconds=0.5), finished_at=enq + timedelta(seconds=1.5))
        if mode != "no_gt":
            job.gt_sha256 = self.put(encode_mask(gt), "image/png")
        self.s.add(job)
        if mode == "failed":  # the worker quotes the raw name: the report must hash its patient id
            job.status, job.error = JobStatus.failed, f"{name}: cannot decode image (broken data stream)"
            job.finished_at = enq + timedelta(seconds=0.7)
            self.s.flush()
            return
        if mode == "perfect":
            prob = gt.astype(np.float32) * 0.9
        elif mode == "near":  # a partial leak: the ground truth with one vessel pixel dropped
            prob = gt.astype(np.float32) * 0.9
            prob[tuple(np.argwhere(gt)[0])] = 0.0
        elif mode == "empty":
            prob = np.zeros(SHAPE, np.float32)
            job.status = JobStatus.no_segmentation
        else:
            shifted = np.roll(gt, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
            prob = np.clip(ndimage.gaussian_filter(shifted.astype(np.float32), 1.0) + rng.normal(0, 0.1, SHAPE), 0, 1)
            prob = prob.astype(np.float32)
        pred = prob > 0.5
        pr = Prediction(
            job_id=job.id, model_version_id=mv.id, text=None, threshold=0.5, batch_size=2,
            mask_sha256=self.put(encode_mask(pred), "image/png"),
            prob_sha256=self.put(encode_probability(prob), "image/png"),
            preprocess_ms=3.0 + i, compute_ms=40.0 + 5 * (i // 2),  # frames 2k, 2k+1: one batch
        )
        self.s.add(pr)
        self.s.flush()
        if mode == "no_gt":
            return
        self.s.add(Metrics(job_id=job.id, **compute_metrics(pred, gt)))
        self.s.flush()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("reportdb")
    url = f"sqlite:///{tmp}/x.sqlite"
    upgrade_schema(url)
    blobs = BlobStore()
    session = get_sessionmaker(url)()
    b = Builder(session, blobs)
    rng = np.random.default_rng(7)
    mv, mv2 = b.version("vesselness"), b.version("noop")
    main, other, perfect = b.run("main-run"), b.run("other-run"), b.run("perfect-run")
    b.run("empty-run")
    no_gt = b.run("no-gt-run")
    for i in (40, 41):
        b.frame(no_gt, mv, i, rng, mode="no_gt")
    for i in range(10):
        mode = {3: "failed", 4: "perfect", 6: "empty"}.get(i, "noisy")
        b.frame(main, mv, i, rng, mode=mode)
    for i in list(range(2, 9)) + [20, 21]:  # 7 shared frames (one failed in main-run), 2 of its own
        b.frame(other, mv2, i, rng)
    for i in range(30, 34):
        b.frame(perfect, mv, i, rng, mode="perfect")
    partial = b.run("partial-leak-run")
    for i in range(100, 124):  # 6 near-perfect frames among 18 honest ones
        b.frame(partial, mv, i, rng, mode="near" if i % 4 == 0 else "noisy")
    # calibration: val-run holds frames 50-53 only; eval-a / eval-b share frames 60-65
    val, eval_a, eval_b = (b.run(n, "vesselness?method=sato") for n in ("val-run", "eval-a", "eval-b"))
    for run_, frames in ((val, range(50, 54)), (eval_a, range(60, 66)), (eval_b, range(60, 66))):
        for i in frames:
            b.frame(run_, mv, i, rng)
    session.commit()
    yield session, blobs
    session.close()
    dispose_all()


@pytest.fixture(scope="module")
def report(db, tmp_path_factory: pytest.TempPathFactory):
    session, blobs = db
    out = tmp_path_factory.mktemp("out")
    paths = build_report(session, blobs, "main-run", pseudonymizer=PSEUDO, out_dir=out, compare="other-run")
    return paths, json.loads(paths["json"].read_text())


def all_output_text(paths: dict[str, Path]) -> str:
    parts = [p.read_text(encoding="utf-8") for p in paths.values()]
    fig_dir = paths["md"].parent / f"{paths['md'].stem}_figures"
    parts += [p.name for p in fig_dir.iterdir()]
    return "\n".join(parts)


def test_files_written(report) -> None:
    paths, _ = report
    assert set(paths) == {"md", "html", "json"}
    for fmt, p in paths.items():
        assert p.exists() and p.name == f"main-run.{fmt}"
    fig_dir = paths["md"].parent / "main-run_figures"
    pngs = sorted(p.name for p in fig_dir.glob("*.png"))
    want = {"case_worst", "case_median", "case_best", "dice_histogram", "threshold_sweep", "paired_dice"}
    assert set(pngs) == {f"{w}.png" for w in want}
    md = paths["md"].read_text()
    for png in pngs:
        assert f"(main-run_figures/{png})" in md


def test_html_is_self_contained(report) -> None:
    paths, _ = report
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html
    assert html.count("<img ") >= 5
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    assert paths["html"].stat().st_size < 3_000_000


def test_no_raw_patient_ids_anywhere(report) -> None:
    paths, data = report
    text = all_output_text(paths)
    for pid in PATIENTS:
        assert pid not in text
    assert "p-" in text and "_frame_000001.jpg" in text  # display names are there instead
    assert data["failures"][0]["examples"][0].startswith("p-")


def test_json_mean_dice_equals_numpy(db, report) -> None:
    session, _ = db
    _, data = report
    dices = session.scalars(
        select(Metrics.dice).join(Job, Job.id == Metrics.job_id).join(Run).where(Run.name == "main-run")
    ).all()
    values = np.array([d for d in dices if d is not None])
    assert data["metrics"]["dice"]["n"] == len(values) == 9
    assert data["metrics"]["dice"]["mean"] == pytest.approx(float(values.mean()), abs=1e-12)
    assert data["metrics"]["dice"]["ci_low"] <= data["metrics"]["dice"]["mean"] <= data["metrics"]["dice"]["ci_high"]
    # the no_segmentation frame has an empty prediction: precision undefined, counted, not averaged
    assert data["metrics"]["precision"]["n_undefined"] == 1


def test_counts_failures_latency(report) -> None:
    _, data = report
    counts = data["counts"]["by_status"]
    assert counts["done"] == 8 and counts["failed"] == 1 and counts["no_segmentation"] == 1 and counts["running"] == 0
    (failure,) = data["failures"]
    assert failure["count"] == 1 and failure["reason"] == "cannot decode image (broken data stream)"
    lat = data["latency"]
    assert lat["queue_wait_s"]["p50"] == pytest.approx(0.5)
    assert lat["end_to_end_s"]["p99"] == pytest.approx(1.5)
    # 10 finished jobs (failed ones count) between the first enqueue and the last finish (+10.5 s)
    assert lat["throughput_jobs_per_s"] == pytest.approx(10 / 10.5)
    assert lat["queue_wait_s"]["n"] == 10 and lat["end_to_end_s"]["p50"] == pytest.approx(1.5)
    # compute_ms is per batch: frames 2k and 2k+1 share one batch value
    assert lat["compute_batch_ms"]["n"] == 5 and lat["compute_batch_ms"]["p50"] == pytest.approx(50.0)


def test_integrity_flags_the_leaked_frame_only(report) -> None:
    _, data = report
    sus = data["suspicious"]
    assert sus["frames"] == [data["frames"][i]["display_name"] for i in range(10) if data["frames"][i]["exact_match"]]
    assert len(sus["frames"]) == 1 and sus["frames"][0].endswith("_frame_000004.jpg")
    assert sus["run"] is False
    assert any("leaked" in r for r in sus["reasons"])


def test_all_perfect_run_is_suspicious(db, tmp_path: Path) -> None:
    session, blobs = db
    paths = build_report(session, blobs, "perfect-run", pseudonymizer=PSEUDO, out_dir=tmp_path,
                         formats=("json", "html"), sweep_thresholds=0)
    data = json.loads(paths["json"].read_text())
    assert data["suspicious"]["run"] is True and len(data["suspicious"]["frames"]) == 4
    assert data["threshold_sweep"] is None
    assert "SUSPICIOUS" in paths["html"].read_text() and "leaked" in paths["html"].read_text()
    assert "md" not in paths and not (tmp_path / "perfect-run_figures").exists()


@pytest.mark.parametrize("run_name", ["empty-run", "no-gt-run"])
def test_runs_without_metrics_still_report(db, tmp_path: Path, run_name: str) -> None:
    session, blobs = db
    paths = build_report(session, blobs, run_name, pseudonymizer=PSEUDO, out_dir=tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["metrics"]["dice"]["n"] == 0 and data["metrics"]["dice"]["mean"] is None
    assert data["threshold_sweep"] is None and data["cases"] == [] and data["suspicious"]["run"] is False
    assert "No frame has both a stored probability map and ground truth" in paths["md"].read_text()
    console = Console(record=True, width=120)
    console.print(summary_table(session, run_name, pseudonymizer=PSEUDO))
    assert "no frame has ground truth" in console.export_text()


def test_json_only_and_bad_format(db, tmp_path: Path) -> None:
    session, blobs = db
    paths = build_report(session, blobs, "main-run", pseudonymizer=PSEUDO, out_dir=tmp_path, formats=["json"],
                         sweep_thresholds=5)
    assert list(paths) == ["json"] and sorted(p.name for p in tmp_path.iterdir()) == ["main-run.json"]
    data = json.loads(paths["json"].read_text())
    assert len(data["threshold_sweep"]["thresholds"]) == 5 and data["figures"] == {}
    assert [c["label"] for c in data["cases"]] == ["worst", "median", "best"]
    with pytest.raises(ValueError, match="pdf"):
        build_report(session, blobs, "main-run", pseudonymizer=PSEUDO, out_dir=tmp_path, formats=["pdf"])


def test_threshold_sweep(report) -> None:
    _, data = report
    sw = data["threshold_sweep"]
    assert sw["n_frames"] == 9 and len(sw["thresholds"]) == 19
    assert sw["thresholds"][0] == pytest.approx(0.05) and sw["thresholds"][-1] == pytest.approx(0.95)
    assert sw["best_mean_dice"] == pytest.approx(max(sw["mean_dice"]))
    # at the run threshold the sweep reproduces the stored masks, hence the stored metrics
    assert sw["mean_dice_at_run_threshold"] == pytest.approx(data["metrics"]["dice"]["mean"], abs=1e-9)
    assert "optimistic" in sw["note"]


def test_compare_pairs_shared_frames(report) -> None:
    _, data = report
    comp = data["comparison"]
    assert comp["n_shared"] == 7 and comp["n_only_this_run"] == 3 and comp["n_only_other_run"] == 2
    assert comp["dice"]["n"] == 6 and comp["dice"]["n_excluded"] == 1  # frame 3 failed in main-run
    rows = [r for r in comp["per_frame"] if r["dice_a"] is not None and r["dice_b"] is not None]
    assert comp["dice"]["mean_diff"] == pytest.approx(np.mean([r["dice_a"] - r["dice_b"] for r in rows]))
    assert 0.0 <= comp["dice"]["p_value"] <= 1.0 and comp["iou"]["n"] == 6


def test_header_and_model_version(report) -> None:
    _, data = report
    run = data["run"]
    assert run["name"] == "main-run" and run["n_frames"] == 10 and run["threshold"] == 0.5
    assert run["model_version"] == {"backend": "vesselness", "params": {"sigma": 2}, "checkpoint_hash": "c" * 64,
                                    "code_version": "abc1234"}
    assert [c["label"] for c in data["cases"]] == ["worst", "median", "best"]
    assert data["cases"][-1]["dice"] == 1.0


def test_load_run_unknown_lists_runs_and_split_filter(db) -> None:
    session, _ = db
    with pytest.raises(NotFound, match="main-run"):
        load_run(session, "nope", pseudonymizer=PSEUDO)
    split = {frame_name(0), frame_name(1), "not-in-run.jpg"}
    run = load_run(session, "main-run", pseudonymizer=PSEUDO, split_names=split)
    assert [f.name for f in run.frames] == [frame_name(0), frame_name(1)]
    by_pseudonym = load_run(session, "main-run", pseudonymizer=PSEUDO, split_names={PSEUDO.name(frame_name(1))})
    assert [f.name for f in by_pseudonym.frames] == [frame_name(1)]  # shareable split files work too
    assert run.frames[0].queue_wait_s == pytest.approx(0.5) and run.frames[0].metrics is not None


def test_summary_table(db) -> None:
    session, _ = db
    console = Console(record=True, width=120)
    console.print(summary_table(session, "main-run", pseudonymizer=PSEUDO))
    text = console.export_text()
    assert "dice" in text and "failed" in text and "SUSPICIOUS" in text
    assert re.search(r"dice\s+│\s+0\.\d{4}\s+│\s+\[0\.\d{4}, [01]\.\d{4}\] n=9", text)


def test_case_figure_is_png_and_checks_shapes() -> None:
    gt = np.zeros((20, 20), bool)
    gt[5:8] = True
    png = case_figure(np.zeros((20, 20, 3), np.uint8), gt, np.roll(gt, 1, axis=0), "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="size"):
        case_figure(np.zeros((20, 21, 3), np.uint8), gt, gt, "t")


def test_partial_leak_is_flagged(db, tmp_path: Path) -> None:
    session, blobs = db
    paths = build_report(session, blobs, "partial-leak-run", pseudonymizer=PSEUDO, out_dir=tmp_path,
                         formats=("json", "md"), sweep_thresholds=0)
    sus = json.loads(paths["json"].read_text())["suspicious"]
    leaked = sorted(PSEUDO.name(frame_name(i)) for i in range(100, 124, 4))
    assert sus["frames"] == leaked and sus["n_near_perfect"] == 6 and sus["n_scored"] == 24
    assert sus["near_perfect_fraction"] == pytest.approx(0.25) and sus["mean_dice_of_rest"] < 0.9
    assert sus["run"] is True and any("partial leak" in r for r in sus["reasons"])
    assert "25.0%" in paths["md"].read_text()


def test_single_near_perfect_frame_flags_the_frame_not_the_run(report) -> None:
    _, data = report
    sus = data["suspicious"]
    assert sus["n_near_perfect"] == 1 and sus["run"] is False and len(sus["frames"]) == 1


def test_compare_with_uncalibrated_thresholds_warns(report) -> None:
    paths, data = report
    warnings = data["comparison"]["threshold_warnings"]
    assert len(warnings) == 2 and all("not calibrated" in w for w in warnings)
    assert "UNFAIR THRESHOLD" in paths["md"].read_text()
    assert data["run"]["threshold_source"] == "model default"


def test_calibration_held_out_or_not(db, tmp_path: Path) -> None:
    session, blobs = db
    on_val = calibrate_run(session, blobs, "val-run", pseudonymizer=PSEUDO).calibration
    on_itself = calibrate_run(session, blobs, "eval-b", pseudonymizer=PSEUDO).calibration
    assert on_val.n_frames == 4 and on_itself.n_frames == 6 and 0.02 <= on_val.threshold <= 0.98
    key = ModelSpec.parse("vesselness?method=sato").key
    assert on_val.model_key == key and latest_calibration(session, key).id == on_itself.id
    assert latest_calibration(session, ModelSpec.parse("vesselness").key) is None
    for name, cal in (("eval-a", on_val), ("eval-b", on_itself)):
        run = session.scalars(select(Run).where(Run.name == name)).one()
        run.threshold_source, run.threshold = source_text(cal), cal.threshold
    session.flush()
    paths = build_report(session, blobs, "eval-a", pseudonymizer=PSEUDO, out_dir=tmp_path, compare="eval-b",
                         formats=("json",), sweep_thresholds=0)
    data = json.loads(paths["json"].read_text())
    assert data["run"]["threshold_source"].startswith(f"calibration {on_val.id} (run val-run, 4 frames")
    (warning,) = data["comparison"]["threshold_warnings"]  # eval-a's threshold is held out, eval-b's is not
    assert "eval-b" in warning and "6 of the 6 compared frames" in warning
    session.rollback()


def test_calibrate_refuses_a_run_without_probabilities(db) -> None:
    session, blobs = db
    with pytest.raises(NotFound, match="no-gt-run"):
        calibrate_run(session, blobs, "no-gt-run", pseudonymizer=PSEUDO)


def test_figures_are_legible(report) -> None:
    paths, _ = report
    fig = paths["md"].parent / "main-run_figures" / "case_worst.png"
    with PILImage.open(fig) as img:
        assert min(img.info["dpi"]) >= 149 and img.width >= 1500


def test_zoom_box_finds_the_densest_errors() -> None:
    from sa2va_queue.report.figures import error_cluster_box

    gt = np.zeros((512, 512), bool)
    gt[100:110, :] = True
    pred = gt.copy()
    pred[400:420, 300:330] = True  # a blob of false positives
    pred[100:110, 20:24] = False  # a few misses elsewhere
    (r0, r1), (c0, c1) = error_cluster_box(gt, pred)
    assert r1 - r0 == c1 - c0 == 128 and r0 <= 400 and r1 >= 420 and c0 <= 300 and c1 >= 330
    assert error_cluster_box(gt, gt) == ((0, 512), (0, 512))


class _NoBlobs:
    """A blob store that fails the test if the report decodes a map."""

    def get(self, session, sha: str) -> bytes:
        raise AssertionError("the threshold sweep decoded a blob although every frame has a stored sweep")


def test_stored_sweeps_give_the_decoded_sweep_exactly(db) -> None:
    from dataclasses import replace

    from sa2va_queue.core.imaging import decode_mask, decode_probability, quantize_probability
    from sa2va_queue.core.metrics import dice_sweep_quantized
    from sa2va_queue.report.summarize import threshold_sweep

    session, blobs = db
    run = load_run(session, "main-run", pseudonymizer=PSEUDO)
    grid = np.linspace(0.05, 0.95, 19)  # the report's default grid: on SWEEP_GRID
    decoded, _ = threshold_sweep(session, blobs, run, grid)  # this fixture stores no sweeps: decodes
    frames = []
    for f in run.frames:
        if f.prob_sha256 and f.gt_sha256:  # what the worker stores, from the map as stored
            prob = decode_probability(blobs.get(session, f.prob_sha256))
            gt = decode_mask(blobs.get(session, f.gt_sha256), "gt", prob.shape)
            sweep = dice_sweep_quantized(quantize_probability(prob), gt, f.threshold).astype("<f8").tobytes()
            f = replace(f, dice_sweep=sweep)
        frames.append(f)
    stored = replace(run, frames=frames)
    fast, skipped = threshold_sweep(session, _NoBlobs(), stored, grid)
    assert skipped == [] and fast == decoded
    # a threshold off the stored grid: back to decoding the maps, same numbers as before
    off_grid = np.array([0.05, 0.333])
    assert threshold_sweep(session, blobs, stored, off_grid) == threshold_sweep(session, blobs, run, off_grid)
    with pytest.raises(AssertionError, match="decoded a blob"):
        threshold_sweep(session, _NoBlobs(), stored, off_grid)


def test_figures_drawn_in_processes_equal_those_drawn_inline(db, report, tmp_path: Path) -> None:
    """`run` draws its report's figures in processes started ahead: the same PNGs, the same documents."""
    session, blobs = db
    with FigurePool(2) as pool:
        paths = build_report(session, blobs, "main-run", pseudonymizer=PSEUDO, out_dir=tmp_path, compare="other-run",
                             figure_pool=pool)
    inline_dir = report[0]["md"].parent / "main-run_figures"
    pooled = sorted((tmp_path / "main-run_figures").glob("*.png"))
    assert [p.name for p in pooled] == sorted(p.name for p in inline_dir.glob("*.png"))
    for p in pooled:
        assert p.read_bytes() == (inline_dir / p.name).read_bytes(), p.name
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")  # generated_at differs
    assert stamp.sub("", paths["md"].read_text()) == stamp.sub("", report[0]["md"].read_text())
    assert json.loads(paths["json"].read_text())["cases"] == report[1]["cases"]


def test_a_figure_failing_in_its_process_is_a_warning_and_its_case_stays_listed() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    with FigurePool(1) as pool:
        bad = pool.draw("case_figure", image, np.zeros((32, 32), bool), np.zeros((64, 64), bool), "worst")
        good = pool.draw("dice_histogram", [0.5, 0.7, 0.9])
        assert isinstance(bad.exception(timeout=120), ValueError)
    report = {"warnings": [], "cases": [{"label": "worst", "figure": "case_worst"}]}
    run = type("R", (), {"scrub": staticmethod(lambda text: text)})()
    pngs = _collect({"case_worst": (bad, "worst case"), "dice_histogram": (good, "histogram")}, report, run)
    assert list(pngs) == ["dice_histogram"] and pngs["dice_histogram"][0].startswith(b"\x89PNG")
    assert report["cases"] == [{"label": "worst", "figure": None}]
    assert len(report["warnings"]) == 1 and "case_worst" in report["warnings"][0]
    assert "differ in size" in report["warnings"][0]
