"""Temporary files beside their destination: naming, modes, signals, and the sweep of dead runs' leftovers.

A temporary file is named ``.NAME.<pid>.<random>.partial`` in the destination's folder, so a run that was
killed outright (SIGKILL, power loss) leaves something recognisable: the next run that writes into that folder
removes every such file whose owning process is gone, and never one whose process still runs. A sharded write
also leaves a *journal* (a temporary file listing the shards it publishes before its index): when its run died
before the index was published, the sweep removes those shards too.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import signal
import stat
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from types import FrameType

from .formats import show

_SUFFIX = ".partial"
_TEMP_RE = re.compile(
    r"^\.(?P<stem>.+)\.(?P<pid>[0-9]{1,10})\.(?P<token>[0-9a-f]{8})(?P<journal>\.journal)?\.partial$", re.DOTALL
)
_MAX_JOURNAL_BYTES = 1 << 24


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C while files are being published, so that every cleanup runs."""


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, the folder's file system takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def temp_path(dest: Path, *, journal: bool = False) -> Path:
    """A fresh temporary name beside ``dest``: ``.NAME.<pid>.<random>.partial`` (``...journal.partial`` for a
    journal), the name shortened so the whole fits the file system's limit (a 250-byte destination name still
    gets a temporary file)."""
    folder = dest.parent
    tail = f".{os.getpid()}.{secrets.token_hex(4)}{'.journal' if journal else ''}{_SUFFIX}"
    room = name_max(folder) - len(tail.encode()) - 1
    stem = os.fsencode(dest.name)[: max(room, 1)].decode(errors="ignore") or "x"
    return folder / f".{stem}{tail}"


def owner_pid(path: Path) -> int | None:
    """The pid a temporary file of ours was made by; ``None`` for any other name."""
    match = _TEMP_RE.match(path.name)
    return int(match.group("pid")) if match else None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return True
    return True


def sweep(folder: Path) -> list[Path]:
    """Remove the leftovers of runs that died in ``folder``: their temporary files, and the shards a dead
    run's journal says it published without publishing their index. Returns what was removed."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.endswith(_SUFFIX):
            continue
        path = folder / name
        match = _TEMP_RE.match(name)
        if match is None or pid_alive(int(match.group("pid"))):
            continue
        if match.group("journal"):
            removed += _undo_journal(path)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
                removed.append(path)
    return removed


def write_journal(path: Path, index: str, shards: dict[str, int], obsolete: dict[str, int] | None = None) -> None:
    """Record, durably, the shards (name -> inode) a sharded write is about to publish before ``index``, and
    the files (name -> inode) it removes once ``index`` is in place."""
    record = {"deconv2shuffle-journal": 1, "index": index, "shards": shards, "obsolete": obsolete or {}}
    data = json.dumps(record).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_folder(path.parent)


def _undo_journal(journal: Path) -> list[Path]:
    """Finish a dead run's sharded write one way or the other: its index did not make it into place, so the
    shards it published go; or it did, so the files it meant to remove afterwards go."""
    try:
        with journal.open("rb") as f:
            record = json.loads(f.read(_MAX_JOURNAL_BYTES))
        index, shards, obsolete = record["index"], record["shards"], record.get("obsolete", {})
        if not isinstance(index, str) or not isinstance(shards, dict) or not isinstance(obsolete, dict):
            return []
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return []
    in_use = _shards_in_use(journal.parent / index)
    if in_use is None:  # an index that cannot be read may still use them: keep them
        return []
    committed = bool(shards) and set(shards) <= in_use
    doomed = obsolete if committed else shards
    return [p for name, inode in doomed.items() if (p := remove_if_same(journal.parent / name, inode, keep=in_use))]


def remove_if_same(path: Path, inode: object, keep: Collection[str] = ()) -> Path | None:
    """Remove ``path`` if it is still the regular file with that inode and its name is not in ``keep``."""
    name = path.name
    if not isinstance(inode, int) or name in keep or name in ("", ".", "..") or "/" in name:
        return None
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_ino == inode:
            os.unlink(path)
            return path
    except OSError:
        pass
    return None


def _shards_in_use(index: Path) -> set[str] | None:
    try:
        with index.open("rb") as f:
            weight_map = json.loads(f.read(_MAX_JOURNAL_BYTES * 8)).get("weight_map", {})
        return {str(v) for v in weight_map.values()}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux: /proc/self/status)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:  # os.umask can only be read by setting it: do so as briefly as possible
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file here."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, so
    ``finally`` blocks remove temporary files; the previous handler comes back on exit. A no-op outside the
    main thread, and where a handler is already installed (the caller's handler then decides how to stop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:  # an outer publication or a caller (batch) already handles SIGTERM
        yield
        return

    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"terminated by signal {signum}")


def describe_os_error(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{e.strerror}; the disk or quota is full"
    if e.errno == errno.ENAMETOOLONG:
        return "the file name is too long for this file system"
    return show(e.strerror or str(e))
