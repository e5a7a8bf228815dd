"""Writing the rewritten model while it is rewritten; publishing it only once every check passed.

Copying hundreds of megabytes into a file takes about as long as rearranging them. So, for a
model written inline, a writer thread puts each node's new weights into the staged file as soon
as the node is rewritten and checked, while the next node is rearranged (the layout that allows
this is in :mod:`.deferred`). What depends on the whole graph, its end, is written after the
model checks; the file is fsynced and moved into place after that. A failure or an interrupt
stops the writer and removes the staged file: nothing is published. A model written with
external data is written whole at the end, by onnx's own writer.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import onnx

from .deferred import Deferred, prefix, write_fragment, write_spliced
from .errors import OnnxModelError
from .files import publish, staging, write_staged


class Output:
    """The staged output of one migration (see the module docstring)."""

    def __init__(self, dst: Path, folder: Path) -> None:
        self.dst, self.folder = dst, folder
        self.streamed: list[str] = []  # placeholders handed to the writer, in file order
        self._deferred = Deferred()
        self._file: BinaryIO | None = None
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None
        self._cancel = False

    def stream(self, model: onnx.ModelProto, deferred: Deferred) -> None:
        """Open the staged file, write its first field, and start the writer for :meth:`done`."""
        self._deferred = deferred
        try:
            self._file = open(self.folder / self.dst.name, "wb")  # noqa: SIM115 (closed by close())
            self._file.write(prefix(model))
        except OSError as e:
            raise OnnxModelError(f"{self.dst}: write failed ({e}); nothing was written") from None
        self._thread = threading.Thread(target=self._run, name="deconv2shuffle-onnx-writer", daemon=True)
        self._thread.start()

    def done(self, names: Iterable[str]) -> None:
        """Hand the weights of a node just rewritten and checked (placeholder names) to the writer."""
        if self._thread is None:
            return
        for name in names:
            if name in self._deferred.arrays:
                self.streamed.append(name)
                self._queue.put(name)

    def _run(self) -> None:
        assert self._file is not None
        while (name := self._queue.get()) is not None:
            if self._error is None and not self._cancel:
                try:
                    write_fragment(self._file, self._deferred, name)
                    self._file.flush()
                    os.fdatasync(self._file.fileno())  # on disk while the rewrite goes on: the last fsync is short
                except OSError as e:
                    self._error = e

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def write(self, model: onnx.ModelProto, deferred: Deferred, *, external: bool) -> list[Path]:
        """Finish the staged file (or write it whole), fsync it and move it into place.

        The streamed part is kept only when it is exactly a part of this model: written without
        error, of placeholders the final graph still holds. Otherwise the file is written anew.
        """
        self._stop()
        if self._error is not None:
            raise OnnxModelError(f"{self.dst}: write failed ({self._error}); nothing was written")
        usable = self._file is not None and not external and set(self.streamed) <= set(deferred.held(model.graph))
        if not usable:
            self.close()
            return publish(write_staged(model, self.dst, self.folder, external=external, deferred=deferred), self.dst)
        assert self._file is not None
        try:
            write_spliced(model, deferred, self._file, written=self.streamed)
            self._file.flush()
            os.fsync(self._file.fileno())
        except (OSError, ValueError) as e:
            raise OnnxModelError(f"{self.dst}: write failed ({e}); nothing was written") from None
        finally:
            self.close()
        return publish([self.folder / self.dst.name], self.dst)

    def close(self) -> None:
        """Stop the writer (skipping what it has not written yet) and close the file."""
        self._cancel = True
        self._stop()
        if self._file is not None:
            self._file.close()
            self._file = None


@contextlib.contextmanager
def output(dst: Path | None) -> Iterator[Output | None]:
    """The staged output for ``dst`` (None: a dry run, nothing is written); removed unless published."""
    if dst is None:
        yield None
        return
    with staging(dst) as folder:
        out = Output(dst, folder)
        try:
            yield out
        finally:
            out.close()
