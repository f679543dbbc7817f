"""Vesselness: the per-image cut rule, folded into the stored probability so mask = probability > threshold."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import apply_hysteresis_threshold

from sa2va_queue.core.exceptions import ConfigError
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.worker.backends.base import SegmentationRequest
from sa2va_queue.worker.backends.vesselness import VesselnessModel


def _model(spec: str = "vesselness") -> VesselnessModel:
    return VesselnessModel(ModelSpec.parse(spec))


def _response() -> np.ndarray:
    """A strong vessel (3% of pixels, so it sets the 99th percentile to 1.0), a faint branch
    attached to it, and an isolated faint blob of the same strength as the branch."""
    r = np.zeros((100, 100), np.float32)
    r[20:23, :] = 1.0
    r[23:60, 50] = 0.05  # faint branch, touching the vessel
    r[80:84, 10:14] = 0.05  # isolated blob: noise or a rib edge
    return r


def test_hysteresis_keeps_the_attached_branch_and_drops_the_isolated_blob() -> None:
    result = _model().result(_response())
    assert result.mask[21, 0] and result.mask[40, 50] and not result.mask[81, 11]
    np.testing.assert_array_equal(result.mask, result.probability > 0.5)
    # the same mask as an independent hysteresis (low 0.03, high 0.8 of the 99th percentile)
    np.testing.assert_array_equal(result.mask, apply_hysteresis_threshold(_response(), 0.03, 0.8))
    plain = _model("vesselness?rule=percentile").result(_response())
    assert plain.mask[81, 11] and plain.mask[40, 50]  # without seeds the blob passes too


def test_other_thresholds_scale_the_per_image_cut() -> None:
    r = _response()
    r[30:33, :] = 0.5  # a second, moderately strong vessel
    model = _model("vesselness?threshold=0.9")
    prob = model.probability(r)
    # t = 0.9 cuts seeded components at 1.8 x low: the faint branch (0.05 < 0.054) goes, vessels stay
    assert model.result(r).mask[31, 5] and not model.result(r).mask[40, 50]
    np.testing.assert_array_equal(model.result(r).mask, prob > 0.9)
    assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1


def test_scale_does_not_matter_only_shape() -> None:
    """The cut is relative to the image's own response: a tenfold weaker response, same mask."""
    model = _model()
    np.testing.assert_array_equal(model.result(_response()).mask, model.result(_response() * 0.1).mask)
    assert not model.result(np.zeros((50, 50), np.float32)).mask.any()


def test_predict_end_to_end_and_version() -> None:
    model = _model()
    image = np.full((64, 64, 3), 200, np.uint8)
    image[30:34, 4:60] = 60  # a dark bar
    (result,) = model.predict([model.preprocess(SegmentationRequest("j", image, "p"))])
    assert result.mask[32, 30] and result.mask.mean() < 0.3
    params = model.version.params
    assert params["rule"] == "hysteresis" and params["low"] == 0.03 and params["high"] == 0.8
    assert params["threshold"] == 0.5 == model.threshold == ModelSpec.parse("vesselness").threshold


def test_high_below_low_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="low <= high"):
        _model("vesselness?low=0.5&high=0.2")


def test_cut_defaults_depend_on_the_method_and_options_override_them() -> None:
    assert (_model().params["low"], _model().params["high"]) == (0.03, 0.8)
    sato = _model("vesselness?method=sato")
    assert (sato.params["low"], sato.params["high"]) == (0.2, 0.8)
    assert _model("vesselness?method=sato&low=0.1").params["low"] == 0.1
    assert ModelSpec.parse("vesselness?method=sato").key != ModelSpec.parse("vesselness").key  # own queue
