"""Keyed pseudonyms: stable within a deployment, different across deployments, not reversible by guessing."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from sa2va_queue.core.exceptions import ConfigError
from sa2va_queue.core.pseudonyms import KEY_FILE, Pseudonymizer, load_key
from sa2va_queue.core.settings import Settings

NAME = "Zhao_Lei_0000412233__1-4_1_04B2D3CF_frame_000034.jpg"


def test_same_pseudonym_within_a_deployment_different_in_another(tmp_path: Path) -> None:
    first = Pseudonymizer.from_settings(Settings.load(environ={}, data_dir=tmp_path / "site-a"))
    again = Pseudonymizer.from_settings(Settings.load(environ={}, data_dir=tmp_path / "site-a"))  # a later run
    other = Pseudonymizer.from_settings(Settings.load(environ={}, data_dir=tmp_path / "site-b"))
    assert first.name(NAME) == again.name(NAME) != other.name(NAME)
    assert first.name(NAME).endswith("__1-4_1_04B2D3CF_frame_000034.jpg") and "Zhao" not in first.name(NAME)
    assert first.pseudonym("P001") != first.pseudonym("P002")


def test_key_file_is_private_and_never_in_the_output(tmp_path: Path) -> None:
    pseudo = Pseudonymizer.from_settings(Settings.load(environ={}, data_dir=tmp_path))
    key_file = tmp_path / KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert len(key) == 64 and key not in pseudo.name(NAME) and key not in repr(pseudo)


def test_configured_key_wins_and_is_hidden_from_repr(tmp_path: Path) -> None:
    settings = Settings.load(environ={"SA2VA_PSEUDONYM_KEY": "s" * 40}, data_dir=tmp_path)
    assert "s" * 40 not in repr(settings)
    assert Pseudonymizer.from_settings(settings).name(NAME) == Pseudonymizer(b"s" * 40).name(NAME)
    assert not (tmp_path / KEY_FILE).exists()
    with pytest.raises(ConfigError, match="SA2VA_PSEUDONYM_KEY"):
        Settings.load(environ={"SA2VA_PSEUDONYM_KEY": "short"})


def test_guessing_ids_without_the_key_finds_nothing(tmp_path: Path) -> None:
    pseudo = Pseudonymizer.from_settings(Settings.load(environ={}, data_dir=tmp_path))
    target = pseudo.pseudonym("P001")
    guesses = {f"P{i:03d}" for i in range(1000)}
    unkeyed = {"p-" + hashlib.sha256(g.encode()).hexdigest()[:n] for g in guesses for n in (10, 16)}
    assert target not in unkeyed  # the old unsalted hash is no longer a dictionary away


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_key(None, tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(list(tmp_path.iterdir())) == 1  # no temp file left behind


def test_empty_key_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("")
    with pytest.raises(ConfigError, match=KEY_FILE):
        load_key(None, tmp_path)


def test_unwritable_data_dir_is_an_error_naming_the_key_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="pseudonym.key.*SA2VA_PSEUDONYM_KEY"):
        load_key(None, blocker / "data")
