"""The `sa2va` backend through the project's SegmentationModel interface (tiny models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from sa2va_queue.core.exceptions import ConfigError, InputError, ModelError
from sa2va_queue.worker.backends import build_model
from sa2va_queue.worker.backends.base import SegmentationRequest
from sa2va_queue.worker.backends.sa2va import tiny

PROMPT = "<image>Please segment the blood vessel."


def _req(i, h, w, prompt=PROMPT):
    img = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return SegmentationRequest(job_id=f"job-{i}", image=img, prompt=prompt)


@pytest.fixture(scope="module")
def tiny_model():
    m = build_model("sa2va:tiny?family=internlm2&seed=0&force_answer=Sure, [SEG].&threshold=0.4")
    m.setup("cpu")
    return m


def test_tiny_spec_batch_equals_singles(tiny_model):
    reqs = [_req(0, 40, 60), _req(1, 64, 64), _req(2, 90, 31)]
    batch = tiny_model.predict([tiny_model.preprocess(r) for r in reqs])
    assert len(batch) == 3
    for r, res in zip(reqs, batch):
        single = tiny_model.predict([tiny_model.preprocess(r)])[0]
        assert res.probability.shape == res.mask.shape == r.image.shape[:2]
        assert res.probability.dtype == np.float32 and res.mask.dtype == bool
        assert res.text == "Sure, [SEG]." and not res.no_segmentation
        assert np.array_equal(res.mask, res.probability > 0.4)
        assert float(np.abs(res.probability - single.probability).max()) < 1e-4
        assert np.array_equal(res.mask, single.mask)


def test_version_records_options_and_hash(tiny_model):
    v = tiny_model.version
    assert v.backend == "sa2va"
    assert v.params["family"] == "internlm2" and v.params["threshold"] == 0.4 and v.params["dtype"] == "fp32"
    assert v.params["force_answer"] == "Sure, [SEG]."
    other = build_model("sa2va:tiny?family=internlm2&seed=1&force_answer=Sure, [SEG].&threshold=0.4")
    assert len(v.checkpoint_hash) == 64 and other.version.checkpoint_hash != v.checkpoint_hash


def test_no_seg_answer_is_no_segmentation():
    m = build_model("sa2va:tiny?family=qwen2&force_answer=I see no vessel.")
    m.setup("cpu")
    res = m.predict([m.preprocess(_req(3, 30, 50))])[0]
    assert res.no_segmentation and res.text == "I see no vessel."
    assert res.probability.shape == (30, 50) and not res.probability.any() and not res.mask.any()


def test_bad_input_fails_that_job_only(tiny_model):
    with pytest.raises(InputError, match="job-x"):
        tiny_model.preprocess(SegmentationRequest("job-x", np.zeros((10, 10), np.float32), PROMPT))
    with pytest.raises(InputError):
        tiny_model.preprocess(_req(4, 20, 20, prompt="<image><image>"))


def test_bad_specs():
    for spec in ("sa2va", "sa2va:tiny?dtype=int8", "sa2va:tiny?threshold=1.5", "sa2va:tiny?bogus=1",
                 "sa2va:tiny?family=llama", "sa2va:/nonexistent/folder", "sa2va:tiny?gpus=a",
                 "sa2va:tiny?max_tiles=0", "sa2va:tiny?seg_merge=union"):
        with pytest.raises(ConfigError):
            build_model(spec)
    with pytest.raises(ModelError, match="setup"):
        build_model("sa2va:tiny").preprocess(_req(0, 10, 10))


def test_official_folder_spec(tmp_path):
    folder = tiny.write_tiny_official_folder(tmp_path / "m", family="qwen2", seed=4, shards=2)
    m = build_model(f"sa2va:{folder}?dtype=fp32&force_answer=Sure, [SEG].")
    m.setup("cpu")
    t = build_model("sa2va:tiny?family=qwen2&seed=4&force_answer=Sure, [SEG].")
    t.setup("cpu")
    reqs = [_req(5, 33, 44), _req(6, 50, 20)]
    a = m.predict([m.preprocess(r) for r in reqs])
    b = t.predict([t.preprocess(r) for r in reqs])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.probability, y.probability)
    v = m.version
    assert v.params["family"] == "qwen2" and v.params["dtype"] == "fp32" and len(v.checkpoint_hash) == 64


@pytest.mark.gpu
def test_gpu_bf16_auto_placement(tmp_path):
    import torch

    folder = tiny.write_tiny_official_folder(tmp_path / "m", family="internlm2", seed=4)
    gpus = ",".join(str(i) for i in range(torch.cuda.device_count()))
    m = build_model(f"sa2va:{folder}?dtype=bf16&gpus={gpus}&max_memory=1GiB&force_answer=Sure, [SEG].")
    m.setup("auto")
    reqs = [_req(i, 512, 512) for i in range(4)]
    res = m.predict([m.preprocess(r) for r in reqs])
    assert all(r.probability.shape == (512, 512) and not r.no_segmentation for r in res)
    ref = build_model(f"sa2va:{folder}?dtype=fp32&force_answer=Sure, [SEG].")
    ref.setup("cpu")
    exp = ref.predict([ref.preprocess(r) for r in reqs])
    for a, b in zip(res, exp):
        assert float(np.abs(a.probability - b.probability).mean()) < 0.05


@pytest.mark.gpu
def test_gpu_tiny_cuda_free_generation():
    m = build_model("sa2va:tiny?family=qwen2&dtype=bf16&max_new_tokens=16")
    m.setup("cuda")
    res = m.predict([m.preprocess(_req(i, 64, 80)) for i in range(3)])
    assert len(res) == 3 and all(r.probability.shape == (64, 80) for r in res)
