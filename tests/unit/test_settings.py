from __future__ import annotations

from pathlib import Path

import pytest

from sa2va_queue.core.exceptions import ConfigError, UnknownModel
from sa2va_queue.core.settings import DEFAULT_PROMPT, Settings
from sa2va_queue.worker.backends import build_model
from sa2va_queue.core.modelspec import ModelSpec


def test_defaults_are_local_sqlite_under_the_data_dir(tmp_path):
    s = Settings.load(environ={}, data_dir=tmp_path)
    assert s.is_local and s.prompt == DEFAULT_PROMPT
    assert s.sqlalchemy_url == f"sqlite:///{(tmp_path / 'sa2va-queue.sqlite').resolve()}"


def test_environment_then_flags(tmp_path):
    env = {"SA2VA_BROKER_URL": "redis://h:6379/1", "SA2VA_MAX_BATCH_SIZE": "16", "SA2VA_DATA_DIR": str(tmp_path),
           "SA2VA_STORE_PROBABILITIES": "no", "SA2VA_DATABASE_URL": "postgresql://u@h/db"}
    s = Settings.load(environ=env, max_batch_size=4)
    assert s.broker_url == "redis://h:6379/1" and s.max_batch_size == 4 and s.data_dir == Path(tmp_path)
    assert s.store_probabilities is False
    assert s.sqlalchemy_url == "postgresql+psycopg://u@h/db"
    assert Settings.load(environ=s.to_environ()) == s  # what a child process gets reproduces it


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SA2VA_BROKER_URL": "http://x"}, "SA2VA_BROKER_URL"),
        ({"SA2VA_DATABASE_URL": "mysql://x"}, "SA2VA_DATABASE_URL"),
        ({"SA2VA_MAX_BATCH_SIZE": "many"}, "SA2VA_MAX_BATCH_SIZE"),
        ({"SA2VA_MAX_BATCH_SIZE": "0"}, "SA2VA_MAX_BATCH_SIZE"),
        ({"SA2VA_STORE_PROBABILITIES": "maybe"}, "SA2VA_STORE_PROBABILITIES"),
        ({"SA2VA_METRIC_NICE": "20"}, "SA2VA_METRIC_NICE"),
    ],
)
def test_a_bad_setting_is_one_error_naming_it(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.load(environ=env)


def test_password_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={"SA2VA_BROKER_URL": "amqp://u:secret@h//"})
    assert "secret" not in str(info.value)


def test_model_spec_round_trip():
    spec = ModelSpec.parse("sa2va:/models/ft?dtype=bf16&threshold=0.4")
    assert (spec.name, spec.path, spec.options) == ("sa2va", "/models/ft", {"dtype": "bf16", "threshold": "0.4"})
    assert ModelSpec.parse(str(spec)) == spec
    assert ModelSpec.parse("vesselness") == ModelSpec("vesselness")


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModel, match="vesselness"):
        build_model("unet")


def test_bad_backend_option_is_a_config_error():
    with pytest.raises(ConfigError, match="sigmaa"):
        build_model("vesselness?sigmaa=3")
    with pytest.raises(ConfigError, match="not a finite number"):
        build_model("vesselness?threshold=high")
