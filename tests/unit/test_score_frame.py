"""What a metric process computes for one frame (worker/pipeline.score_frame): the same metrics and
Dice sweep as computed in place from the bool mask and the decoded ground truth, for any width (the
mask travels as bits packed per row); a ground truth of another size fails with its own message."""

from __future__ import annotations

import numpy as np
import pytest

from sa2va_queue.core.exceptions import InputError
from sa2va_queue.core.imaging import encode_mask, quantize_probability
from sa2va_queue.core.metrics import compute_metrics, dice_sweep_quantized
from sa2va_queue.worker.pipeline import ScoreTask, score_frame


@pytest.mark.parametrize("shape", [(13, 7), (64, 64), (5, 130), (512, 512)])
def test_metrics_and_sweep_equal_the_in_place_computation(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    prob = rng.random(shape).astype(np.float32)
    mask, truth = prob > 0.5, rng.random(shape) > 0.7
    q = quantize_probability(prob)
    metrics, sweep = score_frame(ScoreTask(np.packbits(mask, axis=1), shape, encode_mask(truth), "t.png", q, 0.5))
    assert metrics == compute_metrics(mask, truth)
    assert sweep == dice_sweep_quantized(q, truth, 0.5).astype("<f8").tobytes()


def test_no_map_no_sweep_and_a_wrong_size_is_an_input_error() -> None:
    mask = np.zeros((8, 8), bool)
    metrics, sweep = score_frame(ScoreTask(np.packbits(mask, axis=1), (8, 8), encode_mask(mask), "t.png", None, 0.5))
    assert sweep is None and metrics["dice"] == 1.0
    with pytest.raises(InputError, match="t.png: mask is 9x8"):
        score_frame(ScoreTask(np.packbits(mask, axis=1), (8, 8), encode_mask(np.zeros((8, 9), bool)), "t.png",
                              None, 0.5))
