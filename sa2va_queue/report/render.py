"""Write a run report as Markdown, self-contained HTML and JSON.

summarize.py computes one dict of numbers; `_document` turns it into a short list of blocks
(heading, paragraph, warning, table, figure) that both text renderers walk, so Markdown and HTML
cannot disagree with the JSON. HTML embeds figures as data URIs and loads nothing from outside;
Markdown links PNG files written next to it. Only display names (patient ids hashed) are written.
"""

from __future__ import annotations

import base64
import html
import json
import math
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sqlalchemy.orm import Session

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.core.exceptions import Sa2vaQueueError
from sa2va_queue.core.imaging import decode_image, decode_mask
from sa2va_queue.core.names import report_stem
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.report.collect import RunData, load_run
from sa2va_queue.report.drawing import TIMEOUT_S, FigurePool, draws_figures
from sa2va_queue.report.summarize import (
    compare_runs,
    fmt,
    select_cases,
    summarize_run,
    threshold_sweep,
)

FORMATS = ("md", "html", "json")
MAX_LISTED = 50  # suspicious frames named in md/html (JSON lists all)
Block = tuple[Any, ...]


def build_report(
    session: Session,
    blobs: BlobStore,
    run_name: str,
    *,
    pseudonymizer: Pseudonymizer,
    out_dir: Path,
    formats: Sequence[str] = FORMATS,
    compare: str | None = None,
    split_names: set[str] | None = None,
    sweep_thresholds: int = 19,
    figure_pool: FigurePool | None = None,
) -> dict[str, Path]:
    """Write <out_dir>/<run_name>.{md,html,json} (those in `formats`); returns format -> path.
    `figure_pool`: where the figures are drawn (default: inline, one after another)."""
    wanted = [f.lower().lstrip(".") for f in formats]
    unknown = sorted(set(wanted) - set(FORMATS))
    if unknown or not wanted:
        raise ValueError(f"report formats must be among {', '.join(FORMATS)}; got {', '.join(formats) or 'none'}")
    run = load_run(session, run_name, pseudonymizer=pseudonymizer, split_names=split_names)
    other = load_run(session, compare, pseudonymizer=pseudonymizer, split_names=split_names) if compare else None

    report = summarize_run(run)
    report["generated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["split_filter_names"] = None if split_names is None else len(split_names)
    draw = draws_figures(wanted)
    pool = figure_pool or FigurePool(0)
    drawn: dict[str, tuple[Future[bytes], str]] = {}  # figure key -> (PNG being drawn, caption)
    report["cases"] = _case_figures(session, blobs, run, pool, drawn, report["warnings"], draw=draw)
    dices = [r["dice"] for r in report["frames"] if r["dice"] is not None]
    if dices and draw:
        drawn["dice_histogram"] = (pool.draw("dice_histogram", dices), "Per-frame Dice histogram")

    report["threshold_sweep"] = None
    if sweep_thresholds > 0:
        grid = np.linspace(0.05, 0.95, sweep_thresholds)
        sweep, skipped = threshold_sweep(session, blobs, run, grid)
        report["warnings"].extend(skipped[:10] + ([f"... and {len(skipped) - 10} more"] if len(skipped) > 10 else []))
        report["threshold_sweep"] = sweep
        if sweep is not None and draw:
            drawn["threshold_sweep"] = (
                pool.draw("threshold_sweep_figure", sweep["thresholds"], sweep["mean_dice"], sweep["run_threshold"]),
                "Mean Dice against threshold",
            )

    report["comparison"] = None
    if other is not None:
        comp = compare_runs(run, other)
        report["comparison"] = comp
        if comp["dice"]["n"] and draw:
            a = [r["dice_a"] if r["dice_a"] is not None else math.nan for r in comp["per_frame"]]
            b = [r["dice_b"] if r["dice_b"] is not None else math.nan for r in comp["per_frame"]]
            drawn["paired_dice"] = (pool.draw("paired_figure", a, b, (run.name, other.name)), "Paired per-frame Dice")
    pngs = _collect(drawn, report, run)
    report["figures"] = {key: caption for key, (_, caption) in pngs.items()}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(run.name)
    blocks = _document(report)
    paths: dict[str, Path] = {}
    if "json" in wanted:
        paths["json"] = out_dir / f"{stem}.json"
        paths["json"].write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if "md" in wanted:
        fig_dir = out_dir / f"{stem}_figures"
        fig_dir.mkdir(exist_ok=True)
        for old in fig_dir.glob("*.png"):  # a previous report's figures must not linger
            old.unlink()
        for key, (png, _) in pngs.items():
            (fig_dir / f"{key}.png").write_bytes(png)
        paths["md"] = out_dir / f"{stem}.md"
        paths["md"].write_text(_markdown(blocks, f"{stem}_figures"), encoding="utf-8")
    if "html" in wanted:
        paths["html"] = out_dir / f"{stem}.html"
        paths["html"].write_text(_html(blocks, pngs, report["run"]["name"]), encoding="utf-8")
    return paths


def _collect(drawn: dict[str, tuple["Future[bytes]", str]], report: dict[str, Any],
             run: RunData) -> dict[str, tuple[bytes, str]]:
    """The drawn PNGs by key. A figure whose drawing failed (or took over TIMEOUT_S) is left out with a
    warning; its case stays listed, without a figure."""
    pngs: dict[str, tuple[bytes, str]] = {}
    for key, (future, caption) in drawn.items():
        try:
            pngs[key] = (future.result(timeout=TIMEOUT_S), caption)
        except Exception as exc:
            report["warnings"].append(f"no figure {key}: {run.scrub(f'{type(exc).__name__}: {exc}')}")
            for case in report["cases"]:
                if case["figure"] == key:
                    case["figure"] = None
    return pngs


def safe_stem(name: str) -> str:
    """The run name as a file stem that no other run name gets (`a/b` and `a_b` differ): plain
    lower-case names stay as they are, others become a slug plus a hash of the exact name."""
    return report_stem(name)


def _case_figures(
    session: Session,
    blobs: BlobStore,
    run: RunData,
    pool: FigurePool,
    drawn: dict[str, tuple["Future[bytes]", str]],
    warnings: list[str],
    *,
    draw: bool,
) -> list[dict[str, Any]]:
    cases = []
    for label, f in select_cases(run):
        caption = f"{label} Dice: {f.display_name} (Dice {fmt(f.dice)})"
        entry = {"label": label, "display_name": f.display_name, "dice": f.dice, "figure": f"case_{label}"}
        if not draw:
            cases.append(entry | {"figure": None})
            continue
        try:
            assert f.image_sha256 and f.gt_sha256 and f.mask_sha256  # select_cases only picks such frames
            image = decode_image(blobs.get(session, f.image_sha256), f.display_name)
            gt = decode_mask(blobs.get(session, f.gt_sha256), f.display_name, image.shape[:2])
            pred = decode_mask(blobs.get(session, f.mask_sha256), f.display_name, image.shape[:2])
            drawn[f"case_{label}"] = (pool.draw("case_figure", image, gt, pred, caption), caption)
        except (Sa2vaQueueError, ValueError) as exc:
            warnings.append(f"no {label} case figure for {f.display_name}: {run.scrub(str(exc))}")
            continue
        cases.append(entry)
    return cases


# -- document -----------------------------------------------------------------------------------


def _document(r: dict[str, Any]) -> list[Block]:
    run, counts, lat = r["run"], r["counts"], r["latency"]
    mv = run["model_version"] or {}
    b: list[Block] = [("h1", f"Run report: {run['name']}")]
    b.append(("table", ["field", "value"], [
        ["model spec", run["model_spec"]],
        ["model backend", mv.get("backend", "n/a (no prediction yet)")],
        ["model params", json.dumps(mv.get("params"), sort_keys=True) if mv else "n/a"],
        ["checkpoint hash", mv.get("checkpoint_hash") or "n/a"],
        ["code version", mv.get("code_version", "n/a")],
        ["prompt", run["prompt"]],
        ["threshold", fmt(run["threshold"], 3)],
        ["threshold source", run["threshold_source"]],
        ["created", run["created_at"] or "n/a"],
        ["first enqueued / last finished", f"{run['first_enqueued_at'] or 'n/a'} / {run['last_finished_at'] or 'n/a'}"],
        ["frames", str(run["n_frames"]) + (f" (restricted to a split of {r['split_filter_names']} names)"
                                           if r["split_filter_names"] is not None else "")],
        ["report generated", r["generated_at"]],
    ]))
    b += [("warn", w) for w in r["warnings"]]

    sus = r["suspicious"]
    b.append(("h2", "Integrity"))
    if sus["run"] or sus["frames"]:
        b += [("warn", f"SUSPICIOUS: {reason}") for reason in sus["reasons"]]
        if sus["frames"]:
            listed = ", ".join(sus["frames"][:MAX_LISTED])
            more = f" and {len(sus['frames']) - MAX_LISTED} more (see JSON)" if len(sus["frames"]) > MAX_LISTED else ""
            b.append(("p", f"Flagged frames: {listed}{more}."))
    else:
        b.append(("p", "No frame reaches Dice 0.99 (beyond agreement between annotators on angiograms) and no "
                       "prediction is its ground-truth file."))
    if sus.get("n_scored"):
        rest = sus["mean_dice_of_rest"]
        b.append(("p", f"Near-perfect frames (Dice >= 0.99): {sus['n_near_perfect']} of {sus['n_scored']} "
                       f"({sus['near_perfect_fraction']:.1%}); mean Dice of the others: {fmt(rest, 3)}."))

    b.append(("h2", "Status"))
    b.append(("table", ["status", "frames"], [[k, str(v)] for k, v in counts["by_status"].items()]
                        + [["total", str(counts["total"])]]))
    b.append(("p", f"{counts['with_ground_truth']} frames have ground truth, {counts['with_metrics']} have metrics"
                   + (f"; {counts['unfinished']} are not finished." if counts["unfinished"] else ".")))
    if r["failures"]:
        b.append(("h3", "Failure reasons"))
        b.append(("table", ["reason", "frames", "examples"],
                  [[f["reason"], str(f["count"]), ", ".join(f["examples"])] for f in r["failures"]]))

    b.append(("h2", "Metrics"))
    b.append(("p", f"Over the {counts['with_metrics']} frames with metrics. Undefined values (empty-mask rules "
                   "in sa2va_queue/core/metrics.py) are left out of the means and counted as 'undefined'. "
                   "hd95 and assd are surface distances in pixels (lower is better; undefined when exactly one "
                   "mask is empty). CI: 95% percentile bootstrap of the mean."))
    b.append(("table", ["metric", "n", "undefined", "mean", "std", "median", "95% CI"], [
        [m, str(d["n"]), str(d["n_undefined"]), fmt(d["mean"]), fmt(d["std"]), fmt(d["median"]),
         f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]"] for m, d in r["metrics"].items()]))
    if "dice_histogram" in r["figures"]:
        b.append(("fig", "dice_histogram", r["figures"]["dice_histogram"]))

    b.append(("h2", "Latency and throughput"))
    rows = []
    for key, label in [("queue_wait_s", "queue wait (s)"), ("compute_batch_ms", "compute per batch (ms)"),
                       ("compute_per_frame_ms", "compute per frame, amortised (ms)"),
                       ("preprocess_ms", "preprocess (ms)"), ("end_to_end_s", "end to end (s)")]:
        p = lat[key]
        rows.append([label, str(p["n"]), fmt(p["p50"], 3), fmt(p["p95"], 3), fmt(p["p99"], 3)])
    b.append(("table", ["quantity", "n", "p50", "p95", "p99"], rows))
    b.append(("p", f"Throughput: {fmt(lat['throughput_jobs_per_s'], 3)} jobs/s ({lat['n_finished']} finished jobs "
                   f"between the first enqueue and the last finish, {fmt(lat['span_s'], 1)} s). Batches are "
                   "told apart by (worker, batch size, compute time); mean batch size "
                   f"{fmt(lat['mean_batch_size'], 2)}."))

    sw = r["threshold_sweep"]
    b.append(("h2", "Threshold sweep"))
    if sw is None:
        b.append(("p", "No frame has both a stored probability map and ground truth: no sweep."))
    else:
        b.append(("p", f"Over {sw['n_frames']} frames with a probability map and ground truth "
                       f"({sw['n_skipped']} skipped). Best threshold {fmt(sw['best_threshold'], 3)}: mean Dice "
                       f"{fmt(sw['best_mean_dice'])}; at the run's threshold {fmt(sw['run_threshold'], 3)}: "
                       f"{fmt(sw['mean_dice_at_run_threshold'])}."))
        b.append(("warn", sw["note"]))
        if "threshold_sweep" in r["figures"]:
            b.append(("fig", "threshold_sweep", r["figures"]["threshold_sweep"]))
        b.append(("table", ["threshold", "mean Dice"],
                  [[fmt(t, 3), fmt(d)] for t, d in zip(sw["thresholds"], sw["mean_dice"])]))

    comp = r["comparison"]
    if comp is not None:
        b.append(("h2", f"Comparison with {comp['other_run']}"))
        b.append(("p", f"Frames matched by name: {comp['n_shared']} shared, {comp['n_only_this_run']} only in "
                       f"this run, {comp['n_only_other_run']} only in {comp['other_run']} "
                       f"({comp['other_model_spec']}). Differences are this run minus the other."))
        b += [("warn", f"UNFAIR THRESHOLD: {w}") for w in comp.get("threshold_warnings", [])]
        b.append(("table", ["metric", "pairs", "mean (this)", "mean (other)", "mean diff", "95% CI", "Wilcoxon p",
                            "note"],
                  [[m, str(c["n"]), fmt(c["mean_a"]), fmt(c["mean_b"]), fmt(c["mean_diff"]),
                    f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]", _p(c["p_value"]), c["note"] or ""]
                   for m, c in ((m, comp[m]) for m in ("dice", "iou"))]))
        if "paired_dice" in r["figures"]:
            b.append(("fig", "paired_dice", r["figures"]["paired_dice"]))

    if any(c["figure"] in r["figures"] for c in r["cases"]):
        b.append(("h2", "Cases: worst, median and best Dice"))
        b += [("fig", c["figure"], r["figures"][c["figure"]]) for c in r["cases"] if c["figure"] in r["figures"]]

    b.append(("h2", "Frames"))
    cols = ["dice", "iou", "precision", "recall", "cldice", "hd95"]
    b.append(("table", ["frame", "status"] + cols + ["error"],
              [[f["display_name"], f["status"]] + [fmt(f[c]) for c in cols] + [f["error"] or ""]
               for f in r["frames"]]))
    return b


def _p(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.2e}" if p < 1e-3 else f"{p:.4f}")


# -- renderers ----------------------------------------------------------------------------------


def _markdown(blocks: list[Block], fig_dir: str) -> str:
    out: list[str] = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {_md(args[0])}\n")
        elif kind == "p":
            out.append(_md(args[0]) + "\n")
        elif kind == "warn":
            out.append(f"> **Warning:** {_md(args[0])}\n")
        elif kind == "table":
            head, rows = args
            out.append("| " + " | ".join(_md(h) for h in head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "fig":
            key, caption = args
            out.append(f"![{_md(caption)}]({fig_dir}/{key}.png)\n\n*{_md(caption)}*\n")
    return "\n".join(out)


def _md(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f2f2f2}.warn{background:#fff3cd;border-left:4px solid #e0a800;
padding:.5em .8em;margin:.6em 0}.warn.sus{background:#f8d7da;border-color:#c0392b;font-weight:bold}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.85em;color:#555}"""


def _html(blocks: list[Block], pngs: dict[str, tuple[bytes, str]], title: str) -> str:
    e = html.escape
    out = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
           f"<style>{_CSS}</style></head><body>"]
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(args[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(args[0])}</p>")
        elif kind == "warn":
            cls = "warn sus" if str(args[0]).startswith("SUSPICIOUS") else "warn"
            out.append(f'<div class="{cls}">{e(args[0])}</div>')
        elif kind == "table":
            head, rows = args
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif kind == "fig":
            key, caption = args
            data = base64.b64encode(pngs[key][0]).decode("ascii")
            out.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(caption)}</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _jsonable(x: Any) -> Any:
    """Plain JSON types; NaN / inf become null."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, datetime):
        return x.isoformat()
    return x


__all__ = ["build_report", "safe_stem", "FORMATS"]
