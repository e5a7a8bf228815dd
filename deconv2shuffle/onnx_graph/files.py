"""Reading and writing ONNX files: sniffing, external data, opset checks, atomic writes.

An ONNX file is a protobuf ``ModelProto``. Its weights sit either inside it (``raw_data``) or in
external files named by each tensor's ``external_data`` entries, relative to the model's folder.
Protobuf cannot serialise a message above 2 GiB, so larger models must keep their weights outside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputExistsError
from .errors import OnnxModelError, missing_onnx

if TYPE_CHECKING:
    import onnx

MIN_OPSET = 7
PROTOBUF_LIMIT = 2**31 - 1
# A margin for everything that is not tensor data (nodes, names, shapes) when deciding whether a
# model still fits in one protobuf message.
_INLINE_LIMIT = PROTOBUF_LIMIT - 64 * 2**20
SKELETON_BIG = 4096  # initializers above this many bytes become typed graph inputs in the skeleton

# ModelProto's field tags as they appear on the wire (field number << 3 | wire type); protobuf
# writers emit fields in number order, so ``ir_version`` (field 1, varint) comes first.
_MODEL_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}


def looks_like_onnx(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds an ONNX model, judged by its first bytes (no ``onnx`` import needed)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if len(head) < 3 or head[0] != 0x08:
        return False
    if len(head) >= 9 and head[8:9] == b"{":  # a safetensors header length that starts with 0x08
        return False
    i, version, shift = 1, 0, 0
    while i < len(head) and head[i] & 0x80:
        version |= (head[i] & 0x7F) << shift
        shift += 7
        i += 1
    if i >= len(head) - 1:
        return False
    version |= head[i] << shift
    return 1 <= version <= 64 and head[i + 1] in _MODEL_TAGS


def require_onnx(path: object = None) -> None:
    """Raise :class:`OnnxUnavailableError` unless the optional ``onnx`` package imports."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise missing_onnx(path) from None


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


@dataclass
class LoadedModel:
    """A model read into memory (external data included) and where its data came from."""

    path: Path
    model: onnx.ModelProto
    external_files: tuple[Path, ...]
    opset: int


def _external_files(model: onnx.ModelProto, path: Path) -> tuple[Path, ...]:
    """Every external-data file the model names, checked: inside its folder, present, long enough."""
    from onnx import TensorProto
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors

    base = path.parent.resolve()
    files: dict[Path, int] = {}
    for tensor in _get_all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = ExternalDataInfo(tensor)
        location = Path(info.location)
        target = (base / location).resolve()
        if location.is_absolute() or base not in target.parents:
            raise OnnxModelError(
                f"{path}: tensor {tensor.name!r} names external data {info.location!r} outside the model's folder; "
                "only files beside the model are read"
            )
        if not target.is_file():
            raise OnnxModelError(
                f"{path}: external data file {info.location!r} of tensor {tensor.name!r} is missing; "
                f"it must sit in {path.parent or '.'} beside the model"
            )
        size = files.setdefault(target, target.stat().st_size)
        offset = int(info.offset or 0)
        if info.length is not None and offset + int(info.length) > size:
            raise OnnxModelError(
                f"{path}: external data file {info.location!r} is shorter ({size} bytes) than tensor "
                f"{tensor.name!r} needs ({offset + int(info.length)}); it is truncated"
            )
    return tuple(files)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_model(
    path: str | os.PathLike[str],
    *,
    load_data: bool = True,
    on_read: Callable[[tuple[Path, ...]], None] | None = None,
) -> LoadedModel:
    """Read ``path`` and (unless ``load_data`` is false) its external data, after ``onnx.checker``.

    ``on_read`` is called with the external-data files once they are checked and before any of
    their bytes is read (a batch records their identity then).
    Raises :class:`OnnxModelError` with one line naming the file for anything unreadable.
    """
    require_onnx(path)
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if path.is_dir():
        raise OnnxModelError(f"{path}: is a folder, not an ONNX file")
    if not path.is_file():
        raise OnnxModelError(f"{path}: no such file")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except OSError as e:
        raise OnnxModelError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (DecodeError, ValueError, RuntimeError) as e:
        raise OnnxModelError(f"{path}: not a readable ONNX model, truncated or corrupt ({_first_line(e)})") from None
    if not model.HasField("graph"):
        raise OnnxModelError(f"{path}: not an ONNX model (no graph); the file is truncated or of another format")
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        raise OnnxModelError(f"{path}: the model imports no ai.onnx opset; it cannot hold ConvTranspose nodes")
    if not MIN_OPSET <= opset <= newest:
        raise OnnxModelError(
            f"{path}: opset {opset} is not supported (supported: {MIN_OPSET} to {newest}, the newest this onnx "
            f"{onnx.__version__} knows); convert it with onnx.version_converter or upgrade onnx"
        )
    files = _external_files(model, path)
    try:
        onnx.checker.check_model(skeleton(model))
    except (onnx.checker.ValidationError, ValueError) as e:
        raise OnnxModelError(f"{path}: the model fails onnx.checker ({_first_line(e)}); fix or re-export it") from None
    if on_read is not None:
        on_read(files)
    if files and load_data:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as e:
            raise OnnxModelError(f"{path}: cannot read its external data ({_first_line(e)})") from None
    return LoadedModel(path=path, model=model, external_files=files, opset=opset)


def skeleton(
    model: onnx.ModelProto, big: int = SKELETON_BIG, movable: Callable[[onnx.TensorProto], bool] | None = None
) -> onnx.ModelProto:
    """The model without its weights: each large or external initializer becomes a typed graph input.

    Checks and shape inference look at types and shapes only; on the skeleton they never copy
    or read the weights (protobuf would copy them, and cannot hold more than 2 GiB). Initializers
    that ``movable`` refuses stay initializers.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    sk = type(model)()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g = sk.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    g.sparse_initializer.extend(graph.sparse_initializer)
    declared = {v.name for v in graph.input}
    for t in graph.initializer:
        if (t.data_location == TensorProto.EXTERNAL or _nbytes(t) > big) and (movable is None or movable(t)):
            if t.name not in declared:
                g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.append(t)
    return sk


def data_file_name(dst: Path) -> str:
    """The external-data file written beside ``dst``."""
    return f"{dst.name}.data"


def check_destination(src: Path, dst: Path, *, force: bool, input_files: tuple[Path, ...] = ()) -> None:
    """Refuse to overwrite the input (ever), an existing file (without ``force=True``), or a folder."""
    if dst.is_dir():
        raise OutputExistsError(f"{dst}: is a folder; name the output .onnx file")
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise OutputExistsError(f"{dst}: is the input model; choose another output path")
    data = (dst.parent / data_file_name(dst)).resolve()
    if data in {p.resolve() for p in input_files}:
        raise OutputExistsError(f"{dst}: its data file {data.name} would replace the input's external data")
    if dst.exists() and not force:
        raise OutputExistsError(f"{dst}: already exists; pass force=True to replace it")


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data the model holds (from shapes: reading ``raw_data`` would copy it)."""
    from onnx.external_data_helper import _get_all_tensors

    return sum(_nbytes(t) for t in _get_all_tensors(model))


def _nbytes(tensor: onnx.TensorProto) -> int:
    from onnx import helper

    count = 1
    for d in tensor.dims:
        count *= int(d)
    try:
        width = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        width = 8
    return count * width


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging(dst: Path) -> Iterator[Path]:
    """A temporary folder beside ``dst`` for the files to publish; removed with whatever is left in it."""
    parent = dst.parent if str(dst.parent) else Path(".")
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=parent))
    except OSError as e:
        raise OnnxModelError(f"{dst}: cannot create a file in {parent} ({e.strerror})") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_staged(model: onnx.ModelProto, dst: Path, folder: Path, *, external: bool, deferred: Any) -> list[Path]:
    """Write ``model`` (and ``dst.data`` when ``external``) into ``folder``, fsynced; the files to publish.

    ``deferred``: the values of placeholder initializers (a :class:`~.deferred.Deferred`),
    streamed into the file. ``model`` is changed when ``external`` (its tensors then point at
    the data file). Raises :class:`OnnxModelError` when writing fails.
    """
    import onnx

    from .deferred import write_spliced

    staged = folder / dst.name
    files = [staged]
    try:
        if external:
            deferred.fill(model)
            onnx.save_model(
                model,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_file_name(dst),
                size_threshold=1024,
            )
            if (folder / data_file_name(dst)).exists():
                files.insert(0, folder / data_file_name(dst))
        else:
            with open(staged, "wb") as out:
                write_spliced(model, deferred, out)
        for f in files:
            _fsync(f)
    except (OSError, ValueError) as e:
        raise OnnxModelError(f"{dst}: write failed ({e}); nothing was written") from None
    return files


def publish(staged: list[Path], dst: Path) -> list[Path]:
    """Move the staged (fsynced) files beside ``dst``, the model last; returns where they are now."""
    written = []
    for f in staged:
        os.replace(f, dst.parent / f.name)
        written.append(dst.parent / f.name)
    with contextlib.suppress(OSError):
        _fsync(dst.parent if str(dst.parent) else Path("."))
    return written


def write_text(path: Path, text: str) -> None:
    """Write a small text file (a report) atomically: temp file beside it, fsync, ``os.replace``."""
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
