from __future__ import annotations

import pytest

from sa2va_queue.core.exceptions import ConfigError
from sa2va_queue.cli.replicas import parse_gpus, plan_replicas


def test_four_gpus_one_model_each_or_one_model_over_all():
    gpus = parse_gpus("0,1,2,3")
    single = plan_replicas(gpus, 1)
    assert [r.gpus for r in single] == [(0,), (1,), (2,), (3,)]
    assert {r.device for r in single} == {"cuda"} and single[2].env == {"CUDA_VISIBLE_DEVICES": "2"}
    sharded = plan_replicas(gpus, 4)
    assert len(sharded) == 1 and sharded[0].device == "auto"
    assert sharded[0].env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert [r.gpus for r in plan_replicas(gpus, 2)] == [(0, 1), (2, 3)]


@pytest.mark.parametrize("text", ["", "a,b", "0,0", "-1"])
def test_bad_gpu_lists_are_config_errors(text):
    with pytest.raises(ConfigError, match="--gpus"):
        parse_gpus(text)


def test_group_size_must_divide_the_gpus():
    with pytest.raises(ConfigError, match="does not divide"):
        plan_replicas((0, 1, 2), 2)
