"""Writing output files safely: atomically, with the user's umask, and with a clean error.

Every output goes to a hidden temporary file beside its target (named with the writing
process's id) and is renamed into place, so a failed or killed run never leaves a
partial file and never removes the previous output. Temporary files and folders left
by a killed process are removed by the next run that writes there. Operating-system
failures become one-line errors with CLI.md's exit codes: 3 for the environment (disk
full, read-only file system, permission denied), 1 for a path that is wrong (a
directory where a file is expected, a missing parent).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from detector.errors import DetectorError, EnvironmentFailure, InputError

# errno values that mean "the machine", not "the path the user gave"
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                       errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EBUSY,
                       errno.ETXTBSY}
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")


def os_failure(exc: BaseException, path: str | Path, doing: str = "write") -> DetectorError:
    """The error to report for ``exc`` met while ``doing`` ``path``: one line, right code.

    ``exc`` is an OSError, or a library error whose text carries "(os error N)" (polars
    and pyarrow report I/O failures that way).
    """
    code = getattr(exc, "errno", None)
    if code is None:
        found = _OS_ERROR_IN_TEXT.search(str(exc))
        code = int(found.group(1)) if found else None
    reason = os.strerror(code) if code else (str(exc).splitlines() or [type(exc).__name__])[0]
    if code == errno.ENOSPC or code == errno.EDQUOT:
        reason += " (the disk is full)"
    message = f"{path}: cannot {doing}: {reason}"
    if code in _ENVIRONMENT_ERRNOS:
        return EnvironmentFailure(message)
    return InputError(message)


def is_os_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or bool(_OS_ERROR_IN_TEXT.search(str(exc)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


KILL_POINT_VARIABLE = "DETECTOR_KILL_AT"


def checkpoint(name: str) -> None:
    """A named point where tests kill the process (``DETECTOR_KILL_AT=name``) to prove a
    crash there leaves no partial output and a usable store. Does nothing otherwise."""
    if os.environ.get(KILL_POINT_VARIABLE) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def remove_stale_temp_files(target: Path) -> None:
    """Remove ``.<name>.<pid>.*.tmp`` beside ``target`` left by processes that are gone."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[^/]*\.tmp$")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        found = pattern.match(entry.name)
        if found and not pid_alive(int(found.group(1))):
            try:
                entry.unlink()
            except OSError:
                pass


def check_output_path(path: str | Path, what: str = "--out") -> Path:
    """Refuse an output path that cannot work before any work is done.

    A directory where a file is meant, or a parent that is a file, is the user's
    mistake (exit 1); a parent that cannot be written is the environment's (exit 3).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path}: is a directory; give a file path")
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise InputError(f"{what} {path}: {ancestor} is a file, not a directory")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise EnvironmentFailure(f"{what} {path}: cannot write in {ancestor}: "
                                         f"{os.strerror(errno.EACCES)}")
            break
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it onto ``path``."""
    return atomic_write_many([path], lambda tmps: write(tmps[0]))[0]


def atomic_write_many(paths: Sequence[str | Path],
                      write: Callable[[list[Path]], None]) -> list[Path]:
    """Write several files that belong together (a table and its sidecar) atomically.

    Every file is written in full first; only then are they renamed into place, the
    first last, so a failure before the renames replaces nothing.
    """
    paths = [check_output_path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(path)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path),
                                       suffix=".tmp")
            os.close(fd)
            tmps.append(Path(tmp))
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        write(tmps)
        checkpoint("write:before-rename")
        for tmp, path in reversed(list(zip(tmps, paths))):
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, DetectorError) or not isinstance(exc, Exception):
            raise
        if is_os_failure(exc):
            failed = next((p for t, p in zip(tmps, paths) if not t.exists()), paths[0])
            raise os_failure(exc, failed) from None
        raise
    return paths


TEMP_DIR_PREFIX = "detector-"


@contextmanager
def temporary_directory(purpose: str) -> Iterator[Path]:
    """A private temporary folder named with this process's id, removed on exit; folders
    of the same purpose left by killed processes are removed first."""
    base = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{TEMP_DIR_PREFIX}{re.escape(purpose)}-(\d+)-")
    try:
        for entry in base.iterdir():
            found = pattern.match(entry.name)
            if found and entry.is_dir() and not pid_alive(int(found.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
    except OSError:
        pass
    try:
        directory = tempfile.mkdtemp(prefix=f"{TEMP_DIR_PREFIX}{purpose}-{os.getpid()}-")
    except OSError as exc:
        raise os_failure(exc, base, "create a temporary folder in") from None
    try:
        yield Path(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
