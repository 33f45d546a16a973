"""Elementwise regions that depend on one tensor, folded into one table.

A quantized elementwise operator of one int8 tensor is a function of that tensor's code, a 256-entry
table (:class:`~.ir.Lookup`). So is any region of them that reads no other tensor: GELU as exporters
write it, ``x · (Erf(x / √2) + 1) · 0.5``, is a chain table, an Add of a constant, a Mul of two
tensors that both derive from ``x``, and a Mul by a constant. :func:`fold_code_functions` evaluates such
a region on all 256 codes of its source with the operators' exact arithmetic (the tables themselves,
:meth:`~tcloud.firmware.binary.QLinearBinary.reference` for Add and Mul, which equal onnxruntime's
``QLinearAdd``/``QLinearMul``), and replaces its last operator by one lookup of the source: the result is
unchanged, bit for bit, and the vector engines pass over the data once instead of once per operator.
"""

import numpy as np

from tcloud.firmware.binary import BinaryOperand, QLinearBinary

from .ir import Elementwise, Lookup

_IDENTITY = np.arange(256, dtype=np.uint8).view(np.int8)
"""The codes of the source itself, indexed by its stored byte."""


def fold_code_functions(graph):
    """Replace every elementwise region of :class:`~.ir.Lookup` and :class:`~.ir.Elementwise` nodes that
    depends on one tensor by one :class:`~.ir.Lookup` of it, and drop the operators nothing reads any
    more. Returns ``graph`` (changed in place)."""
    functions = {}
    """tensor → (source, stored codes indexed by the source's stored byte, operators)."""
    for index, node in enumerate(graph.nodes):
        function = _function(node, graph, functions)
        if function is None:
            continue
        functions[node.output] = function
        source, table, ops = function
        if not (isinstance(node, Lookup) and node.inputs == [source]):
            graph.nodes[index] = Lookup(node.name, "→".join(ops), [source], node.output, table=table)
    _drop_unread(graph, {name for name, (source, _, _) in functions.items() if source != name})
    return graph


def _function(node, graph, functions):
    def of(name):
        return functions.get(name, (name, _IDENTITY, ()))

    if isinstance(node, Lookup):
        source, codes, ops = of(node.inputs[0])
        return source, node.table[codes.view(np.uint8)], ops + (node.op,)
    if not isinstance(node, Elementwise) or node.constant_matrix is not None:
        return None
    tensors = graph.tensors
    a, y = tensors[node.inputs[0]], tensors[node.output]
    spec_of = lambda b, constant=None: QLinearBinary(  # noqa: E731
        node.kind, BinaryOperand(a.scale, a.zero_point, a.dtype), b, BinaryOperand(y.scale, y.zero_point, y.dtype),
        constant)
    source, a_codes, ops = of(node.inputs[0])
    if node.constant is None:
        b = tensors[node.inputs[1]]
        b_source, b_codes, b_ops = of(node.inputs[1])
        if b_source != source:
            return None
        out = spec_of(BinaryOperand(b.scale, b.zero_point, b.dtype)).reference(
            a_codes.astype(np.int64) + a.offset, b_codes.astype(np.int64) + b.offset)
        ops = ops + tuple(op for op in b_ops if op not in ops)
    elif node.constant_axis is None:
        out = spec_of(BinaryOperand(*node.constant_quant), np.asarray(node.constant[:1], np.int64)).reference(
            a_codes.astype(np.int64) + a.offset)
    else:
        return None
    return source, (out - y.offset).astype(np.int8), ops + (node.op,)


def _drop_unread(graph, folded):
    """Remove folded operators whose output no operator reads and the model does not output."""
    while True:
        read = {name for node in graph.nodes for name in node.inputs} | set(graph.outputs)
        kept = [node for node in graph.nodes if node.output not in folded or node.output in read]
        if len(kept) == len(graph.nodes):
            return
        graph.nodes = kept
