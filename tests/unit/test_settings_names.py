"""Issue 8: settings validated where they are read, run names checked in one place, report file
names that cannot collide, URLs redacted, rich output escaped."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console
from rich.table import Table

from sa2va_queue.core.exceptions import ConfigError
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.names import RUN_NAME_MAX, printable, report_stem, validate_run_name
from sa2va_queue.core.settings import Settings, redact_url

# -- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("env", ["SA2VA_MAX_QUEUE_DELAY_MS", "SA2VA_JANITOR_INTERVAL_S"])
def test_every_float_setting_must_be_finite(env, value):
    with pytest.raises(ConfigError, match=f"{env}=.*finite"):
        Settings.load(environ={env: value})


def test_nan_through_a_cli_override_is_refused_too():
    with pytest.raises(ConfigError, match="SA2VA_MAX_QUEUE_DELAY_MS"):
        Settings.load(environ={}, max_queue_delay_ms=float("nan"))


def test_visibility_timeout_shorter_than_a_batch_is_refused_naming_both():
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={"SA2VA_VISIBILITY_TIMEOUT_S": "20", "SA2VA_MAX_QUEUE_DELAY_MS": "5000"})
    message = str(info.value)
    assert "SA2VA_VISIBILITY_TIMEOUT_S=20" in message and "SA2VA_MAX_QUEUE_DELAY_MS=5000" in message
    assert "at least 35 s" in message and "\n" not in message


def test_short_visibility_timeout_when_allowed_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sa2va_queue.core.settings"):
        s = Settings.load(environ={"SA2VA_VISIBILITY_TIMEOUT_S": "4", "SA2VA_ALLOW_SHORT_VISIBILITY_TIMEOUT": "true"})
    assert s.visibility_timeout_s == 4
    assert "SA2VA_VISIBILITY_TIMEOUT_S=4" in caplog.text and "SA2VA_MAX_QUEUE_DELAY_MS=10" in caplog.text
    assert Settings.load(environ=s.to_environ()) == s  # a child process gets the same permission


def test_visibility_timeout_not_longer_than_the_queue_wait_is_refused_even_when_allowed():
    with pytest.raises(ConfigError, match="not longer than the queue wait"):
        Settings.load(environ={"SA2VA_VISIBILITY_TIMEOUT_S": "2", "SA2VA_MAX_QUEUE_DELAY_MS": "2000",
                               "SA2VA_ALLOW_SHORT_VISIBILITY_TIMEOUT": "1"})


def test_default_visibility_timeout_is_accepted():
    assert Settings.load(environ={}).visibility_timeout_s == 3600


def test_data_dir_that_is_a_file_is_one_line(tmp_path):
    afile = tmp_path / "data"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=r"SA2VA_DATA_DIR=.*data is a file, not a folder"):
        Settings.load(environ={"SA2VA_DATA_DIR": str(afile)})


@pytest.mark.parametrize(("env", "named"), [
    ({"SA2VA_MAX_PIXELS": "0"}, "SA2VA_MAX_PIXELS"),
    ({"SA2VA_METRICS_PORT": "70000"}, "SA2VA_METRICS_PORT"),
    ({"SA2VA_FILE_MODE": "public"}, "SA2VA_FILE_MODE"),
    ({"SA2VA_METRICS_HOST": " "}, "SA2VA_METRICS_HOST"),
])
def test_new_settings_are_validated(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.load(environ=env)


def test_new_settings_defaults_are_private():
    s = Settings.load(environ={})
    assert s.metrics_host == "127.0.0.1" and s.file_mode == "private" and s.max_pixels == 4096 * 4096


def test_model_path_on_a_model_that_takes_none_is_refused():
    with pytest.raises(ConfigError, match="takes no path"):
        ModelSpec.parse("vesselness:/nonexistent")


def test_percentile_out_of_range_is_refused_at_parse_time():
    with pytest.raises(ConfigError, match="percentile"):
        ModelSpec.parse("vesselness?percentile=250")


# -- URLs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "secret", "kept"), [
    ("postgresql://u:hunter2@db:5432/x", "hunter2", "postgresql://u:***@db:5432/x"),
    ("postgresql://u@db/x?sslmode=require&password=hunter2", "hunter2", "sslmode=require&password=***"),
    ("redis://:s3cret@h:6379/0?ssl_cert_reqs=none", "s3cret", "ssl_cert_reqs=none"),
    ("rediss://h:6380/0?token=abc123&db=2", "abc123", "token=***&db=2"),
    ("redis://u:p@ss@h/0", "p@ss", "redis://u:***@h/0"),
    ("redis://h[:6379?password=zzz", "zzz", "unparseable"),
])
def test_redact_url_hides_passwords_in_userinfo_and_query(url, secret, kept):
    shown = redact_url(url)
    assert secret not in shown and kept in shown


def test_a_query_password_never_reaches_the_error_message():
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={"SA2VA_DATABASE_URL": "mysql://db/x?password=hunter2"})
    assert "hunter2" not in str(info.value)


def test_settings_repr_hides_secrets():
    s = Settings.load(environ={"SA2VA_BROKER_URL": "redis://:pw1@h/0", "SA2VA_FLOWER_PASSWORD": "pw2",
                               "SA2VA_DATABASE_URL": "postgresql://u@h/x?password=pw3"})
    assert not any(secret in repr(s) for secret in ("pw1", "pw2", "pw3"))


# -- run names and report names -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["e2e", "demo", "frames-vesselness-20261201-101010", "[baseline] frangi",
                                  "a/b", "Müller 2026", "x" * RUN_NAME_MAX])
def test_reasonable_run_names_pass(name):
    assert validate_run_name(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("[/]", "no letter or digit"),
    ("x" * 300, "300 characters long; the limit is 120"),
    ("a\nb", "contains '\\\\n'"),
    ("run\x1b[31m", "contains '\\\\x1b'"),
    ("a;b", "contains ';'"),
    (" lead", "starts or ends with a space"),
    ("", "empty"),
])
def test_bad_run_names_are_one_line_config_errors(name, why):
    with pytest.raises(ConfigError, match=why) as info:
        validate_run_name(name)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_report_stems_never_collide():
    names = ["a/b", "a_b", "a:b", "Run", "run", "run~x", "a b", "[baseline] frangi", "baseline_frangi"]
    stems = [report_stem(n) for n in names]
    assert len(set(stems)) == len(names)
    assert report_stem("e2e") == "e2e" and report_stem("main-run") == "main-run"  # plain names unchanged
    assert all("/" not in s and len(s) <= 80 for s in stems)


def test_printable_keeps_markup_and_brackets_visible():
    out = io.StringIO()
    table = Table(title=f"Run {printable('[baseline] frangi')}")
    table.add_column("file")
    table.add_row(printable("dir[/x/a\\[b]"))
    Console(file=out, width=120, color_system=None).print(table)
    assert "Run [baseline] frangi" in " ".join(out.getvalue().split()) and "dir[/x/a\\[b]" in out.getvalue()
