"""One way to write any file: a temporary name in the destination folder, fsync, check, then publish.

- A destination is never a non-regular file (FIFO, device, folder) or a symbolic link, never a protected file
  (an input, an earlier output of the same run), and without ``force`` never any existing file. Without
  ``force`` publication is ``os.link(temp, destination)``, which fails if the destination appeared meanwhile:
  two runs racing for one name cannot both win. With ``force`` it is ``os.replace``.
- A new file gets the mode a plain ``open()`` would give it under the current umask; a forced overwrite keeps
  the replaced file's mode.
- Several files published together (shards, then their index) are written to temporary names first and
  published in order, the last one committing the set; on an exception, Ctrl-C or SIGTERM, every temporary
  file and every file already published by the set is removed.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..errors import CheckpointError, OutputExistsError
from .formats import show
from .tempfiles import (
    describe_os_error,
    fsync_folder,
    name_max,
    new_file_mode,
    remove_if_same,
    sigterm_as_interrupt,
    sweep,
    temp_path,
    write_journal,
)

Check = Callable[[Path], None]


class Sink:
    """What a publication yields: a binary file to write to, and its temporary ``path`` for writers that want
    a file name (``torch.save`` is faster given a path than a file object)."""

    def __init__(self, f: IO[bytes], path: Path) -> None:
        self._f = f
        self.path = path

    def write(self, data: Any) -> int:
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_destination(
    path: Path, *, force: bool, protect: Sequence[Path] = (), inputs: Sequence[Path] = (), what: str = "output"
) -> None:
    """Refuse a destination before any work is done (the same checks run again when publishing).

    ``protect``: files never to replace (inputs of the run, its earlier outputs). ``inputs``: files that
    may be replaced in place, but only with ``force``.
    """
    name = path.name
    if not name or name in (".", ".."):
        raise CheckpointError(f"{show(path)}: not a file name")
    if not name.isprintable():
        raise CheckpointError(f"{show(path)}: the {what} name holds control characters; choose a plain name")
    parent = path.parent
    if not parent.is_dir():
        raise CheckpointError(f"{show(path)}: folder {show(parent)} does not exist")
    if len(os.fsencode(name)) > name_max(parent):
        raise CheckpointError(
            f"{show(path)}: the {what} name is {len(os.fsencode(name))} bytes, longer than this file system allows "
            f"({name_max(parent)}); choose a shorter name"
        )
    if not os.access(parent, os.W_OK):
        raise CheckpointError(f"{show(path)}: folder {show(parent)} is not writable")
    _check_existing(path, force=force, protect=protect, inputs=inputs, what=what)


def _check_existing(
    path: Path, *, force: bool, protect: Sequence[Path], inputs: Sequence[Path], what: str = "output"
) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise CheckpointError(f"{show(path)}: cannot check the {what} ({describe_os_error(e)})") from None
    if stat.S_ISLNK(st.st_mode):
        raise CheckpointError(f"{show(path)}: is a symbolic link; refusing to replace it (give the file it points to)")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{show(path)}: is not a regular file (a folder, FIFO or device); refusing to replace it")
    here = (st.st_dev, st.st_ino)
    if any(_identity(p) == here for p in protect):
        raise OutputExistsError(f"{show(path)}: is an input or an earlier output of this run; refusing to replace it")
    if any(_identity(p) == here for p in inputs) and not force:
        raise OutputExistsError(
            f"{show(path)}: is the input file; refusing to overwrite it (pass force=True to replace it atomically)"
        )
    if not force:
        raise OutputExistsError(f"{show(path)}: already exists; pass force=True to replace it")


class _WriteBehind(threading.Thread):
    """Asks the kernel, 20 times a second, to start writing the file's dirty pages to disk
    (``POSIX_FADV_DONTNEED`` starts asynchronous writeback). Without it a large write piles up dirty pages
    until the kernel throttles the writer, and the final fsync waits for all of them."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="deconv2shuffle-write-behind", daemon=True)
        self._fd = fd
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.05):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def __enter__(self) -> _WriteBehind:
        if hasattr(os, "posix_fadvise"):
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self.is_alive():
            self.join()


class FileSet:
    """Files written to temporary names, then published together by :meth:`commit` (in the order they were
    written; the last one commits the set). Use as a context manager: leaving it without a commit, or with an
    exception, removes every temporary file and every file the set already published."""

    def __init__(self, *, force: bool, protect: Sequence[Path] = (), inputs: Sequence[Path] = ()) -> None:
        self.force = force
        self.protect = list(protect)
        self.inputs = list(inputs)
        self._pending: list[tuple[Path, Path, list[Path], list[Path]]] = []  # (dest, temp, protect, inputs)
        self._published: list[Path] = []
        self._journal: Path | None = None
        self._committed = False
        self._last_inode = -1
        self._swept: set[Path] = set()
        self._signals = sigterm_as_interrupt()

    def __enter__(self) -> FileSet:
        self._signals.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if not self._committed:
                self._rollback()
        finally:
            self._signals.__exit__(kind, value, tb)

    @contextlib.contextmanager
    def write(
        self,
        dest: Path,
        check: Check | None = None,
        *,
        what: str = "output",
        protect: Sequence[Path] | None = None,
        inputs: Sequence[Path] | None = None,
    ) -> Iterator[Sink]:
        """Yield a temporary file for ``dest``; when the block ends, flush, fsync and run ``check`` on it.
        ``protect`` and ``inputs`` default to the set's."""
        if any(d == dest for d, *_ in self._pending):
            raise CheckpointError(f"{show(dest)}: written twice in one run; refusing to replace an output of this run")
        guard = list(self.protect if protect is None else protect)
        replaceable = list(self.inputs if inputs is None else inputs)
        check_destination(dest, force=self.force, protect=guard, inputs=replaceable, what=what)
        if dest.parent not in self._swept:
            sweep(dest.parent)
            self._swept.add(dest.parent)
        tmp = temp_path(dest)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise CheckpointError(
                f"{show(dest)}: cannot create a file in {show(dest.parent)} ({describe_os_error(e)})"
            ) from None
        self._pending.append((dest, tmp, guard, replaceable))
        self._last_inode = os.fstat(fd).st_ino
        try:
            with os.fdopen(fd, "wb") as f, _WriteBehind(fd):
                yield Sink(f, tmp)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise CheckpointError(f"{show(dest)}: write failed ({describe_os_error(e)}); nothing was written") from None
        if check is not None:
            check(tmp)

    def commit(self, obsolete: Sequence[Path] = ()) -> list[Path]:
        """Publish every file in order, then remove ``obsolete`` files (the shards of an index just replaced).
        Several files, or obsolete ones, get a journal first, so that the leftovers of a run killed halfway
        are removed by the next one. Returns the destinations."""
        if not self._pending:
            self._committed = True
            return []
        last = self._pending[-1][0]
        old = {p.name: st.st_ino for p in obsolete if p.parent == last.parent and (st := _stat(p)) is not None}
        if len(self._pending) > 1 or old:
            self._journal = temp_path(last, journal=True)
            shards = {d.name: os.stat(t).st_ino for d, t, *_ in self._pending[:-1] if d.parent == last.parent}
            write_journal(self._journal, last.name, shards, old)
        try:
            with _signals_held():  # Ctrl-C or SIGTERM lands before or after the whole set, not inside it
                for dest, tmp, guard, replaceable in self._pending:
                    self._publish(dest, tmp, guard, replaceable)
                    self._published.append(dest)
                self._committed = True
        except OSError as e:
            raise CheckpointError(
                f"{show(dest)}: cannot publish ({describe_os_error(e)}); nothing was written"
            ) from None
        for folder in {d.parent for d in self._published}:
            fsync_folder(folder)
        published = {d.name for d in self._published}
        for name, inode in old.items():
            remove_if_same(last.parent / name, inode, keep=published)
        if self._journal is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._journal)
        return list(self._published)

    def _publish(self, dest: Path, tmp: Path, protect: list[Path], inputs: list[Path]) -> None:
        if not self.force and os.path.lexists(dest):  # absent when writing began: another run made it since
            raise OutputExistsError(_APPEARED.format(show(dest)))
        _check_existing(dest, force=self.force, protect=protect, inputs=inputs)
        try:
            mode = stat.S_IMODE(os.stat(dest).st_mode) & 0o777 if self.force else new_file_mode()
        except FileNotFoundError:
            mode = new_file_mode()
        os.chmod(tmp, mode)
        if self.force:
            os.replace(tmp, dest)
        else:
            _link_no_replace(tmp, dest)

    def _rollback(self) -> None:
        if self._pending and _same_file(self._pending[-1][0], self._last_inode):
            return  # the last file is in place: the set is committed (a journal, if any, finishes the rest)
        for path in [t for _, t, *_ in self._pending] + self._published:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if self._journal is not None:
            fsync_folder(self._journal.parent)
            with contextlib.suppress(OSError):
                os.unlink(self._journal)


def _same_file(path: Path, inode: int) -> bool:
    st = _stat(path)
    return st is not None and st.st_ino == inode


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (they are delivered when the block ends) where the platform allows."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_APPEARED = "{}: appeared while this run was writing it; left it alone (pass force=True to replace it)"


def _link_no_replace(tmp: Path, dest: Path) -> None:
    """Publish ``tmp`` as ``dest`` unless ``dest`` exists, atomically; then drop the temporary name."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise OutputExistsError(_APPEARED.format(show(dest))) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            raise
        _rename_no_replace(tmp, dest)  # a file system without hard links
        return
    os.unlink(tmp)


def _rename_no_replace(tmp: Path, dest: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(dest), rename_noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise OutputExistsError(_APPEARED.format(show(dest)))
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
    if os.path.lexists(dest):  # last resort: check, then rename (a small race window remains)
        raise OutputExistsError(_APPEARED.format(show(dest)))
    os.rename(tmp, dest)


@contextlib.contextmanager
def publishing(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    protect: Sequence[Path] = (),
    inputs: Sequence[Path] = (),
    check: Check | None = None,
    what: str = "output",
) -> Iterator[Sink]:
    """Write one file by publication: yield a :class:`Sink` on a temporary file beside ``path``; when the
    block ends without error, fsync, run ``check`` (e.g. a read-back) and publish. See the module doc."""
    with FileSet(force=force, protect=protect, inputs=inputs) as files:
        with files.write(Path(path), check, what=what) as sink:
            yield sink
        files.commit()


def publish_bytes(
    path: str | os.PathLike[str], data: bytes, *, force: bool = False, protect: Sequence[Path] = ()
) -> Path:
    """Write ``data`` to ``path`` by publication (reports, specs): never over a protected file (an input,
    an earlier output of the run) or a non-regular file, never over an existing file without ``force``."""
    with publishing(path, force=force, protect=protect, what="file") as sink:
        sink.write(data)
    return Path(path)
