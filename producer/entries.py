"""What a directory entry is, before a byte of it is read: the checks that keep one file from
stopping a scan of a thousand.

`entry_problem` says why a would-be frame cannot be used, or None. It never reads the file (a FIFO
would block the scan forever) and never raises:

* a name that is not valid UTF-8 on disk (Python hands it over with lone surrogates) or that holds
  control characters: neither SQLite nor PostgreSQL can store it as text and a terminal should not
  print it, so the frame is refused and shown with its escapes (`a\\udcff.png`); rename it;
* a name so long that `<stem>_mask.png`, the ground-truth file looked for beside it, is over the
  file system's name limit (a 254-character name raised OSError errno 36 while probing);
* a symlink loop, a dangling symlink, a FIFO, socket or device: named, instead of skipped silently;
* a file larger than any image within the pixel limit can be (`SA2VA_MAX_PIXELS`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from sa2va_queue.core.imaging import max_pixels
from sa2va_queue.core.names import storable_name

MASK_SUFFIX = "_mask.png"  # the longest name probed beside an image (`<stem>_mask.png`)
_DEFAULT_NAME_MAX = 255
_DEFAULT_PATH_MAX = 4096
# 16-bit RGBA uncompressed is 8 bytes a pixel; no image within the pixel limit needs more
_BYTES_PER_PIXEL_MAX = 8
_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def entry_problem(name: str, path: Path) -> tuple[str, str] | None:
    """(problem, what to do) when `path` cannot be used as a frame, else None. Never raises."""
    try:
        return _problem(name, path)
    except Exception as exc:  # noqa: BLE001 -- a safety net: the entry is refused, the scan goes on
        return f"cannot inspect the file ({type(exc).__name__}: {exc})", "check the file and its folder"


def resolves_under(path: Path, folder: Path) -> bool:
    """Whether `path`, links followed, lies in `folder`; False for a path that cannot be resolved
    (a symlink loop raises RuntimeError in Python 3.11)."""
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError, ValueError):
        return False


def _problem(name: str, path: Path) -> tuple[str, str] | None:
    if storable_name(name) is None:
        return ("file name is not valid UTF-8 or holds control characters, so it cannot be stored or shown "
                "as it is", "rename the file (e.g. with `convmv -f latin1 -t utf8`) and run again")
    probe = os.fsencode(path.stem + MASK_SUFFIX)
    name_max = _pathconf(path.parent, "PC_NAME_MAX", _DEFAULT_NAME_MAX)
    if len(probe) > name_max:
        return (f"file name too long to look for its ground truth: {path.stem[:24]}...{MASK_SUFFIX} would be "
                f"{len(probe)} bytes, over the file system's limit of {name_max}", "rename the file shorter")
    path_max = _pathconf(path.parent, "PC_PATH_MAX", _DEFAULT_PATH_MAX)
    if len(os.fsencode(os.path.abspath(path))) + len(MASK_SUFFIX) >= path_max:
        return f"path too long (the limit is {path_max} bytes)", "move the dataset to a shorter path"
    try:
        info = path.stat()  # links followed
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself); not read", "fix or remove the link"
        if path.is_symlink():
            return "dangling symlink (its target does not exist); not read", "restore the target or remove the link"
        return f"cannot read the file ({exc.strerror or exc})", "check it exists and its permissions"
    for is_kind, kind in _SPECIAL:
        if is_kind(info.st_mode):
            return f"not a regular file ({kind}); not read", "replace it with the image file"
    limit = max_pixels() * _BYTES_PER_PIXEL_MAX + (1 << 20)
    if info.st_size > limit:
        return (f"too large: {info.st_size} bytes, more than any image within the pixel limit "
                f"{max_pixels()} can need", "downscale the image, or raise SA2VA_MAX_PIXELS")
    return None


def _pathconf(folder: Path, key: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, key))
    except (OSError, ValueError):
        return default
