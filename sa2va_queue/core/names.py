"""Names from users and from their files: checked once, shown safely, turned into file names safely.

* `validate_run_name`: the one check of a run name (`run`, `enqueue`, `report`): at most
  `RUN_NAME_MAX` characters, letters, digits, space and `._-+=@,:/()[]#`, no leading or trailing
  space. Everything else is refused in one line, before anything is stored.
* `printable`: any text that came from outside (a file name read from disk, a string from a JSON
  file, a run name) as something rich prints verbatim: markup escaped (`[/` in a path raised
  `MarkupError`, `[baseline]` vanished), control characters and lone surrogates written as
  escapes (a terminal never receives an escape sequence from a file name; a non-UTF-8 name never
  raises `UnicodeEncodeError` while printing).
* `storable_name`: None when a file name cannot be stored as text (not valid UTF-8 on disk, or
  holding control characters): such files are refused with a reason instead of crashing SQL.
* `report_stem`: a run name as a file stem; distinct run names never give the same stem.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from rich.markup import escape

from sa2va_queue.core.exceptions import ConfigError

RUN_NAME_MAX = 120
_RUN_NAME_PUNCTUATION = set("._-+=@,:/()[]# ")
_PLAIN_STEM = re.compile(r"[a-z0-9][a-z0-9._-]*")


def validate_run_name(name: str) -> str:
    """`name` unchanged when it is a valid run name; otherwise a one-line ConfigError."""
    if not isinstance(name, str) or not name:
        raise ConfigError("--run-name is empty; give a name of letters, digits and ._-+=@,:/()[]#")
    if len(name) > RUN_NAME_MAX:
        raise ConfigError(f"--run-name {name[:40]!r}... is {len(name)} characters long; "
                          f"the limit is {RUN_NAME_MAX}")
    bad = sorted({c for c in name if not (c.isalnum() or c in _RUN_NAME_PUNCTUATION)})
    if bad:
        shown = ", ".join(ascii(c) for c in bad[:5])
        raise ConfigError(f"--run-name {name!r} contains {shown}; use letters, digits, space "
                          "and ._-+=@,:/()[]# only")
    if name != name.strip():
        raise ConfigError(f"--run-name {name!r} starts or ends with a space; remove it")
    if not any(c.isalnum() for c in name):
        raise ConfigError(f"--run-name {name!r} has no letter or digit; give it a readable name")
    return name


def printable(text: object) -> str:
    """`text` for rich: control characters and surrogates as escapes, markup escaped."""
    return escape(escape_unprintable(str(text)))


def storable_name(name: str) -> str | None:
    """`name` when SQL (SQLite and PostgreSQL text) can hold it and a terminal can show it, else None."""
    if any(_unprintable(c) for c in name):
        return None
    return name


def report_stem(name: str) -> str:
    """A file stem for run `name`: the name itself when it is plain (lower-case letters, digits and
    `._-`), otherwise a slug plus `~` and a hash of the exact name. Plain stems never contain `~`, so
    a slugged name never equals a plain one, and two slugged names differ in their hash (`a/b` and
    `a_b`, or `Run` and `run` on a case-insensitive file system, get different files)."""
    if _PLAIN_STEM.fullmatch(name) and len(name) <= RUN_NAME_MAX:
        return name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "run"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{slug}~{digest}"


def _unprintable(char: str) -> bool:
    # Cc: control characters (ESC starts terminal escape sequences); Cs: lone surrogates, which is
    # what os.fsdecode makes of bytes that are not UTF-8 and which no UTF-8 encoder accepts
    return unicodedata.category(char) in ("Cc", "Cs")


def escape_unprintable(text: str) -> str:
    """`text` with control characters and lone surrogates written as Python escapes (`\\x1b`,
    `\\udcff`): one line, storable in SQLite and PostgreSQL, harmless on a terminal."""
    if text.isprintable() or not any(_unprintable(c) for c in text):  # the first test is one C call
        return text
    return "".join(ascii(c)[1:-1] if _unprintable(c) else c for c in text)
