"""`sa2va-queue convert` and `sa2va-queue inspect`: Sa2VA checkpoint conversion and GPU placement.

Heavy imports (torch, transformers, accelerate) happen inside the commands, so registering them
costs nothing for the rest of the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from sa2va_queue.core.names import printable

console = Console()


def convert_command(
    base: Path = typer.Option(..., "--base", help="Base Sa2VA HF folder (official layout) the training started from"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Training checkpoint: iter_NNNN.pth file or DeepSpeed folder"),
    out: Path = typer.Option(..., "--out", help="Output folder (must not exist or be empty)"),
    config: Optional[Path] = typer.Option(None, "--config", help="mmengine/xtuner training config (LoRA r, lora_alpha)"),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank (instead of / checked against --config)"),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA alpha (instead of / checked against --config)"),
    allow_unchanged: bool = typer.Option(False, "--allow-unchanged", help="Accept a conversion that changes no tensor"),
) -> None:
    """Merge a training checkpoint into its base model and write an official-layout HF folder."""
    from sa2va_queue.worker.backends.sa2va.convert import convert

    report = convert(base, checkpoint, out, config=config, lora_r=lora_r, lora_alpha=lora_alpha,
                     allow_unchanged=allow_unchanged)
    table = Table(title="tensors per module")
    for col in ("module", "in checkpoint", "differ from base", "total"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for module, row in report.per_module.items():
        table.add_row(printable(module), str(row["checkpoint"]), str(row["changed"]), str(row["total"]))
    console.print(table)
    for module, s in report.lora.items():
        console.print(f"LoRA {printable(module)}: r={s['r']} alpha={s['alpha']} scaling={s['scaling']:g} "
                      f"({printable(s['source'])})")
    console.print(f"{report.lora_pairs} LoRA pairs merged, {report.overrides} tensors replaced, "
                  f"{len(report.ignored)} ignored (frozen copies equal to the base)")
    for note in report.notes:
        console.print(f"note: {printable(note)}")
    console.print(f"wrote {printable(report.out_dir)}  model version (manifest sha256) {report.version}")


def inspect_command(
    model_dir: str = typer.Argument(..., help="Sa2VA HF folder (only config.json is read) or a reference name, e.g. Sa2VA-26B"),
    gpus: str = typer.Option("0", "--gpus", help="GPU ids, e.g. 0,1,2,3 (they need not exist here)"),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Per-GPU budget, e.g. 20GiB"),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 | fp16 | fp32"),
) -> None:
    """Show the balanced device map (module -> GPU) and bytes per GPU, computed on the meta device."""
    from sa2va_queue.worker.backends.sa2va.checkpoint import parse_dtype
    from sa2va_queue.worker.backends.sa2va.config import REFERENCE_MODELS, Sa2VAConfig, reference_official_config
    from sa2va_queue.worker.backends.sa2va.placement import compute_placement, human, parse_gpus

    if not Path(model_dir).exists() and model_dir in REFERENCE_MODELS:
        cfg = Sa2VAConfig.from_official(reference_official_config(model_dir), model_dir)
    else:
        cfg = Sa2VAConfig.from_folder(model_dir)
    placement = compute_placement(cfg, parse_gpus(gpus), max_memory, parse_dtype(dtype))
    table = Table(title=f"{printable(model_dir)} ({cfg.family}, {printable(dtype)})")
    table.add_column("module")
    table.add_column("device")
    for module, device in placement.rows():
        table.add_row(printable(module), device)
    console.print(table)
    per = Table(title="bytes per device")
    per.add_column("device")
    per.add_column("weights", justify="right")
    per.add_column("budget", justify="right")
    for dev, n in sorted(placement.bytes_per_device.items()):
        per.add_row(f"cuda:{dev}", human(n), human(placement.budget[dev]))
    per.add_row("total", human(placement.total_bytes), human(sum(placement.budget.values())))
    console.print(per)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
    app.command("inspect")(inspect_command)
