"""Help a person can read: every option described, flags shown as flags, and `--version`."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import typer

from sa2va_queue.cli.main import app


def _walk(command, path):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, [*path, name])


def test_every_option_and_argument_is_described():
    missing = [f"{' '.join(path)} {'/'.join(p.opts)}"
               for path, command in _walk(typer.main.get_command(app), ["sa2va-queue"])
               for p in command.params if not getattr(p, "hidden", False) and not getattr(p, "help", None)]
    assert not missing, f"options without help text: {missing}"


def _cli(*args: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SA2VA_")}, "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-m", "sa2va_queue.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_flags_are_shown_as_flags():
    for args in ([], ["enqueue"], ["requeue"]):
        out = _cli(*args, "--help")
        assert "--help" in out and "<bool>" not in out, out
    assert "--urgent" in out or "--dead" in out


def test_version():
    assert _cli("--version").strip() == f"sa2va-queue {version('sa2va-queue')}"
