"""ONNX model in, ONNX model out: read -> plan -> rewrite (checking each node) -> check -> publish.

Nothing is published unless every rewritten node matches its ConvTranspose in float64, the new
graph passes ``onnx.checker`` (full check), and, when ONNX Runtime is installed, the whole model
matches the original on random inputs. The weights are written into a staged file beside the
output while the rewrite runs (see :mod:`.output`); a failed check removes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from .attrs import Unsupported
from .convert import NodePlan, emitter, geometry, plan_node, rewrite_node
from .deferred import Deferred
from .files import _INLINE_LIMIT, LoadedModel, check_destination, read_model, tensor_bytes
from .graph import (
    GraphIndex,
    Names,
    all_nodes,
    opset_blockers,
    remove_unused,
    set_opset,
    static_shapes,
    subgraphs,
)
from .output import output
from .report import OnnxReport
from .runtime import Reference, compare, reference
from .verify import check_graph

D2S_OPSET = 11


def _plan_all(loaded: LoadedModel, report: OnnxReport) -> list[NodePlan]:
    """Plan every ConvTranspose of the main graph; the others go into the report as left."""
    graph = loaded.model.graph
    index = GraphIndex.build(graph)
    shapes = static_shapes(loaded.model)
    plans: list[NodePlan] = []
    for position, node in enumerate(graph.node):
        if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx"):
            continue
        planned = plan_node(position, node, index, shapes)
        if isinstance(planned, NodePlan):
            plans.append(planned)
            planned = planned.result
        report.nodes.append(planned)
    nested = sum(
        1
        for node in graph.node
        for sub in subgraphs(node)
        for inner in all_nodes(sub)
        if inner.op_type == "ConvTranspose"
    )
    if nested:
        report.notes.append(f"{nested} ConvTranspose node(s) inside If/Loop/Scan subgraphs are left as they are")
    return plans


def _choose_opset(model: onnx.ModelProto, opset: int, plans: list[NodePlan], report: OnnxReport) -> int:
    """Raise the opset to 11 only when a 2D shuffle wants DepthToSpace CRD and no other node changes meaning."""
    wants = [p for p in plans if p.attrs.rank == 2 and p.attrs.strides[0] == p.attrs.strides[1] > 1]
    if opset >= D2S_OPSET or not wants:
        return opset
    blockers = opset_blockers(model, opset, D2S_OPSET, {p.position for p in plans})
    if blockers:
        report.notes.append(
            f"opset {opset} kept: raising it to {D2S_OPSET} for DepthToSpace CRD would change {', '.join(blockers)}; "
            "the 2D shuffles use Reshape/Transpose/Reshape instead"
        )
        return opset
    set_opset(model, D2S_OPSET)
    report.opset_raised_to = D2S_OPSET
    report.notes.append(
        f"opset raised from {opset} to {D2S_OPSET} for DepthToSpace in CRD mode (no other node's definition changes)"
    )
    return D2S_OPSET


def _rewrite_all(
    model: onnx.ModelProto,
    plans: list[NodePlan],
    opset: int,
    deferred: Deferred,
    *,
    verify: bool,
    seed: int,
    read: Mapping[str, Any],
    done: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Replace every planned node in place; returns the values that became unused and were removed.

    Large new weights go into ``deferred`` (placeholders in the graph); ``read`` holds weights'
    bytes already read out of the protobuf; ``done`` gets each rewritten node's new initializers."""
    graph = model.graph
    names = Names(graph)
    obsolete: set[str] = set()
    replacements = []
    for plan in plans:
        em = emitter(plan, graph, names, opset)
        em.deferred = deferred
        try:
            rewrite_node(plan, em, verify=verify, seed=seed, read=read)
        except Unsupported as e:
            plan.result.reason = str(e)
            obsolete.update(em.added)  # nothing reads them: they go again
            continue
        replacements.append((plan.position, em))
        if done is not None:
            done(em.added)
        obsolete.update(i for i in plan.node.input[1:] if i)
    for position, em in sorted(replacements, key=lambda r: r[0], reverse=True):
        del graph.node[position]
        for new in reversed(em.nodes):
            graph.node.insert(position, new)
    return remove_unused(graph, obsolete)


def migrate_onnx(
    src: str | Path,
    dst: str | Path | None,
    *,
    force: bool = False,
    verify: bool = True,
    end_to_end: bool = True,
    tolerance: float = 1e-5,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    external_data: bool | None = None,
    seed: int = 0,
    on_read: Callable[[tuple[Path, ...]], None] | None = None,
) -> OnnxReport:
    """See :func:`deconv2shuffle.onnx_graph.migrate_onnx` (this module needs ``onnx`` at import)."""
    src, dst = Path(src), None if dst is None else Path(dst)
    if dst is not None:
        check_destination(src, dst, force=force)
    loaded = read_model(src, on_read=on_read)
    if dst is not None:
        check_destination(src, dst, force=force, input_files=loaded.external_files)
    report = OnnxReport(
        source_file=str(src), output_file=None if dst is None else str(dst), opset=loaded.opset, tolerance=tolerance
    )
    deferred = Deferred()
    with output(dst) as out:
        if out is not None and external_data is not True and not loaded.external_files:
            unchanged = deferred.adopt(loaded.model.graph, _read_by_rewrite(loaded.model.graph))
            out.stream(loaded.model, deferred)  # each node's weights are written as soon as it is done
            out.done(unchanged)  # the weights no rewrite touches: at once
        original = reference(loaded.model, input_shapes, seed, deferred.arrays) if end_to_end else None
        plans = _plan_all(loaded, report)
        if not report.nodes:
            report.notes.append("the model has no ConvTranspose node; it is written unchanged")
        opset = _choose_opset(loaded.model, loaded.opset, plans, report)
        read = original.weights if isinstance(original, Reference) else {}
        done = None if out is None else out.done
        report.removed = _rewrite_all(
            loaded.model, plans, opset, deferred, verify=verify, seed=seed, read=read, done=done
        )
        del read
        if not verify:
            report.notes.append("per-node float64 checks were not run (verify=False)")
        external = _external(loaded, external_data, dst or src, report)
        check_graph(loaded.model)
        report.checks.append("onnx.checker full check (strict shape inference included): passed")
        if original is None:
            report.end_to_end = {"skipped": "not asked for (end_to_end=False)"}
        else:
            report.end_to_end = compare(original, loaded.model, tolerance=tolerance, known=deferred.arrays)
        del original
        if out is None:
            report.notes.append("dry run: every check ran, nothing was written")
        else:
            report.written = [str(p) for p in out.write(loaded.model, deferred, external=external)]
    report.ok = True
    return report


def _read_by_rewrite(graph: onnx.GraphProto) -> set[str]:
    """Initializers a rewrite may read or remove (inputs of ConvTranspose and DequantizeLinear
    nodes), and those that are graph inputs too: these stay in the protobuf as they are."""
    ops = ("ConvTranspose", "DequantizeLinear")
    read = {name for node in graph.node if node.op_type in ops for name in node.input}
    return read | {v.name for v in graph.input}


def _external(loaded: LoadedModel, asked: bool | None, dst: Path, report: OnnxReport) -> bool:
    size = tensor_bytes(loaded.model)
    if asked is False and size > _INLINE_LIMIT:
        from .errors import OnnxModelError

        raise OnnxModelError(
            f"{dst}: the model's {size / 2**30:.2f} GiB of weights do not fit in one protobuf message (2 GiB); "
            "write them as external data (external_data=True)"
        )
    external = bool(loaded.external_files) if asked is None else asked
    if not external and size > _INLINE_LIMIT:
        external = True
        report.notes.append(
            f"weights ({size / 2**30:.2f} GiB) written as external data: one protobuf holds 2 GiB at most"
        )
    report.external_data = external
    return external


def inspect_onnx(src: str | Path) -> OnnxReport:
    """See :func:`deconv2shuffle.onnx_graph.inspect_onnx`."""
    src = Path(src)
    loaded = read_model(src, load_data=False)
    report = OnnxReport(source_file=str(src), opset=loaded.opset, external_data=bool(loaded.external_files))
    plans = _plan_all(loaded, report)
    for plan in plans:
        low = geometry(plan)
        plan.result.status = "convertible"
        plan.result.new_geometry = low.describe()
        plan.result.macs_ratio = low.macs_ratio
        w = plan.weight.tensor.dims
        plan.result.new_weight_shape = [int(w[1]) * plan.attrs.group * low.phases, int(w[0]) // plan.attrs.group]
        plan.result.new_weight_shape += list(low.kernel)
    if plans and loaded.opset < D2S_OPSET:
        wants = [p for p in plans if p.attrs.rank == 2 and p.attrs.strides[0] == p.attrs.strides[1] > 1]
        skip = {p.position for p in plans}
        blockers = opset_blockers(loaded.model, loaded.opset, D2S_OPSET, skip) if wants else []
        if wants and not blockers:
            report.opset_raised_to = D2S_OPSET
    report.ok = True
    return report
