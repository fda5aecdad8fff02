"""User-facing errors: one line that names the file, case or key and what is wrong."""

from __future__ import annotations

import errno
import os

_CAUSES = {
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop)",
}


class ScnasError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line, no traceback."""


class ConfigError(ScnasError):
    """A configuration key is missing, unknown or has the wrong type or value."""


class DatasetError(ScnasError):
    """A dataset, case or file is malformed."""


def os_error_cause(e: OSError) -> str:
    """The cause of an OSError in words: "no space left on device (disk full)", "read-only file system", ..."""
    if e.errno in _CAUSES:
        return _CAUSES[e.errno]
    if e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    return str(e) or type(e).__name__


def describe_os_error(e: OSError, path: str | os.PathLike | None = None) -> str:
    """`PATH: CAUSE` for an OSError (disk full, read-only, permission, quota, ...), PATH defaulting to the
    file the error names; one line for the CLI and the job targets."""
    where = path if path is not None else (e.filename2 if e.filename2 is not None else e.filename)
    cause = os_error_cause(e)
    if isinstance(where, (str, bytes, os.PathLike)):
        return f"{os.fsdecode(where)}: {cause}"
    return cause
