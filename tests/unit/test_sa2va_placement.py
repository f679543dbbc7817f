"""Device maps on the meta device with made-up GPU ids, and `sa2va-queue inspect`."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from sa2va_queue.cli import cli_model
from sa2va_queue.core.exceptions import ConfigError, ModelError
from sa2va_queue.worker.backends.sa2va import placement
from sa2va_queue.worker.backends.sa2va.config import Sa2VAConfig, reference_official_config


@pytest.fixture(scope="module")
def cfg8b():
    return Sa2VAConfig.from_official(reference_official_config("Sa2VA-8B"))


def _device_of(name, dmap):
    return placement._owner(name, dmap)


def test_8b_over_four_gpus(cfg8b):
    p = placement.compute_placement(cfg8b, [0, 1, 2, 3], "20GiB", torch.bfloat16)
    devices = set(p.device_map.values())
    assert devices == {0, 1, 2, 3}
    assert 14 * 2**30 < p.total_bytes < 18 * 2**30  # ~8B parameters in bf16
    assert sum(p.bytes_per_device.values()) == p.total_bytes
    assert max(p.bytes_per_device.values()) < 20 * 2**30
    # no-split units stay whole
    assert "grounding_encoder" in p.device_map
    assert not any(k.startswith("grounding_encoder.") for k in p.device_map)
    assert not any(k.count(".") > 3 and k.startswith("language_model.model.layers.") for k in p.device_map)
    assert not any(k.startswith("vision_tower.encoder.layer.") and k.count(".") > 3 for k in p.device_map)
    # [SEG] states leave the final norm: text_hidden_fcs sits with it; layers are in order over the GPUs
    assert p.device_map["text_hidden_fcs"] == _device_of("language_model.model.norm", p.device_map)
    layer_devs = [_device_of(f"language_model.model.layers.{i}", p.device_map) for i in range(32)]
    assert layer_devs == sorted(layer_devs)
    rows = dict(p.rows())
    assert any("-" in k for k in rows)  # consecutive layers collapsed


def test_too_small_budget_is_an_error(cfg8b):
    with pytest.raises(ModelError, match="needs"):
        placement.compute_placement(cfg8b, [0, 1], "4GiB", torch.bfloat16)


def test_parsers():
    assert placement.parse_gpus("0, 2,3") == [0, 2, 3]
    assert placement.parse_bytes("20GiB") == 20 * 2**30 and placement.parse_bytes("1.5GB") == 1_500_000_000
    for bad in ("0,0", "a,b"):
        with pytest.raises(ConfigError):
            placement.parse_gpus(bad)
    with pytest.raises(ConfigError):
        placement.parse_bytes("lots")


def test_inspect_cli_on_folder_and_reference(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(reference_official_config("Sa2VA-1B")))
    app = typer.Typer()
    cli_model.register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(tmp_path), "--gpus", "0,1", "--max-memory", "20GiB"])
    assert res.exit_code == 0, res.output
    assert "grounding_encoder" in res.output and "cuda:" in res.output and "total" in res.output
    res = runner.invoke(app, ["inspect", "Sa2VA-26B", "--gpus", "0,1,2,3", "--max-memory", "20GiB"])
    assert res.exit_code == 0, res.output
    assert "cuda:3" in res.output and "language_model.model.layers" in res.output


@pytest.mark.gpu
def test_load_with_device_map_over_all_gpus(tmp_path):
    """Tiny model split over every visible GPU; results equal the single-device run."""
    import numpy as np

    from sa2va_queue.worker.backends.sa2va import checkpoint, tiny
    from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline

    n = torch.cuda.device_count()
    # The reference runs on the CPU: keep CUDA in true fp32 (no TF32) so the two are comparable.
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    built = tiny.build_tiny("internlm2", seed=2)
    folder = tiny.write_official_folder(*built, tmp_path / "m")
    last, mid = f"cuda:{n - 1}", f"cuda:{n // 2}"
    dmap = {  # every module boundary crosses a device when n > 1
        "vision_tower": "cuda:0", "multi_modal_projector": mid, "language_model.model.embed_tokens": "cuda:0",
        "language_model.model.layers.0": "cuda:0", "language_model.model.layers.1": last,
        "language_model.model.norm": last, "language_model.model.rotary_emb": mid, "language_model.lm_head": mid,
        "text_hidden_fcs": last, "grounding_encoder": mid,
    }
    loaded = checkpoint.load_folder(folder, device_map=dmap)
    imgs = [np.random.default_rng(i).integers(0, 255, (50, 70, 3), dtype=np.uint8) for i in range(3)]
    got = Sa2VAPipeline(loaded.model, loaded.tokenizer, loaded.config, force_answer="Sure, [SEG].",
                        sam_autocast=False).segment(
        imgs, ["<image>vessel"] * 3)
    ref = Sa2VAPipeline(*built, force_answer="Sure, [SEG].").segment(imgs, ["<image>vessel"] * 3)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    for a, b in zip(got, ref):
        assert float(np.abs(a.probabilities[0] - b.probabilities[0]).max()) < 1e-3
