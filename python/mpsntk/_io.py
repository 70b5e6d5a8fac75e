"""Crash-safe file writes: readers (and a crash or kill at any moment) see either the previous
file or the complete new one, never a partial write."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat


def atomic_write(path, write):
    """Write a file through ``write(fileobj)`` atomically.

    The data go to a temporary file in the destination's folder (a hidden
    ``.<name>.<random>.tmp``), which is flushed and fsync'ed, then renamed over ``path``
    (``os.replace``, atomic on POSIX and Windows), and the folder is fsync'ed so that the rename
    itself survives a power loss.  A symbolic link at ``path`` is kept: its target is replaced.
    An existing file's permission bits carry over to the new one.  If ``write`` raises, the
    temporary file is removed and ``path`` is untouched; a process killed mid-write leaves the
    temporary file behind (and ``path`` untouched).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    write : callable
        ``write(f)`` writes the content to the binary file object ``f``.
    """
    final = os.path.realpath(os.fsdecode(os.fspath(path)))
    folder, name = os.path.split(final)
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for a plain open()
            break
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(tmp, stat.S_IMODE(os.stat(final).st_mode))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder):
    """Make a rename in ``folder`` durable (not possible, and not needed, on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse it
        pass
    finally:
        os.close(fd)
