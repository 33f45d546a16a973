"""Concat, AveragePool and Transpose in the model compiler: bit-exact against onnxruntime in both
quantized formats and both activation types, and refused with the node, op type and attribute named
where the pNPU cannot reproduce them."""

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from tcloud.firmware.avgpool import divisor_runs, fp32_division
from tcloud.isa import Instr
from tcloud.runtime import CompileError, compile
from tcloud.runtime.compiler.frontend import build_graph
from tcloud.runtime.compiler.ir import Concat
from tcloud.runtime.compiler.quantize import quantize
from tcloud.verif.races import check_program

from conftest import new_tenant
from test_compiler import check_against_onnxruntime, onnxruntime_outputs, with_attribute
from test_golden_ops import run_ve

logging.getLogger().setLevel(logging.ERROR)

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORMATS = st.sampled_from(["qdq", "qop"])
ACTIVATIONS = st.sampled_from(["int8", "uint8"])


def _weight(rng, name, shape):
    return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.standard_normal(shape).astype(np.float32).ravel())


def _model(nodes, input_shape, initializers, batch="N"):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *input_shape])]
    graph = helper.make_graph(nodes, "ops", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv(rng, name, source, out, c, o):
    return (helper.make_node("Conv", [source, f"{name}_w"], [out], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            _weight(rng, f"{name}_w", (o, c, 3, 3)))


# --- Concat ---------------------------------------------------------------------------------------

def concat_image_model(rng, c, widths, with_input, head):
    """Convolutions of ``x`` with ``widths`` filters each (and ``x`` itself, last, if ``with_input``),
    joined along the channels, then a convolution (``head``) or the model output."""
    nodes, initializers, joined = [], [], []
    for index, width in enumerate(widths):
        node, weight = _conv(rng, f"conv{index}", "x", f"c{index}", c, width)
        nodes.append(node)
        initializers.append(weight)
        joined.append(f"c{index}")
    joined += ["x"] if with_input else []
    total = sum(widths) + (c if with_input else 0)
    nodes.append(helper.make_node("Concat", joined, ["j" if head else "y"], name="concat", axis=1))
    if head:
        node, weight = _conv(rng, "head", "j", "y", total, 3)
        nodes.append(node)
        initializers.append(weight)
    return _model(nodes, (c, 5, 5), initializers)


def concat_features_model(rng, k, widths, axis):
    """Gemms of ``x`` with ``widths`` outputs each, joined along the features, then a Gemm."""
    nodes = [helper.make_node("Gemm", ["x", f"w{i}"], [f"g{i}"], name=f"gemm{i}") for i in range(len(widths))]
    nodes += [helper.make_node("Concat", [f"g{i}" for i in range(len(widths))], ["j"], name="concat", axis=axis),
              helper.make_node("Gemm", ["j", "head_w"], ["y"], name="head")]
    initializers = [_weight(rng, f"w{i}", (k, width)) for i, width in enumerate(widths)]
    initializers.append(_weight(rng, "head_w", (sum(widths), 4)))
    return _model(nodes, (k,), initializers)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(1, 6), aligned=st.lists(st.sampled_from([4, 8]), max_size=2),
       last=st.integers(1, 9), with_input=st.booleans(), head=st.booleans(), fmt=FORMATS, activations=ACTIVATIONS)
def test_concat_along_channels_equals_onnxruntime(seed, c, aligned, last, with_input, head, fmt, activations):
    rng = np.random.default_rng(seed)
    widths = aligned + ([] if with_input else [last])
    if with_input:
        widths = widths + [4 * -(-last // 4)]
    check_against_onnxruntime(concat_image_model(rng, c, widths, with_input, head), (c, 5, 5), fmt, rng,
                              activations=activations)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 12), widths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       axis=st.sampled_from([1, -1]), fmt=FORMATS, activations=ACTIVATIONS)
def test_concat_along_features_equals_onnxruntime(seed, k, widths, axis, fmt, activations):
    rng = np.random.default_rng(seed)
    check_against_onnxruntime(concat_features_model(rng, k, widths, axis), (k,), fmt, rng, batch=3,
                              activations=activations)


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_concat_copies_equal_quantizations_and_maps_others_through_tables(fmt):
    rng = np.random.default_rng(5)
    model = quantize(concat_image_model(rng, 3, [4, 4], True, True), fmt,
                     [{"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)} for _ in range(4)])
    concat = next(node for node in build_graph(model, 2).nodes if isinstance(node, Concat))
    assert [table is None for table in concat.tables] == [False, True, False]  # the 2nd input sets the range
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    compiled = compile(model, "small", batch=2)
    assert check_program(compiled.image).races == []
    assert np.array_equal(compiled.run({"x": x})["y"], onnxruntime_outputs(model, {"x": x})["y"])


def test_concat_refuses_the_batch_axis_and_unaligned_channels():
    rng = np.random.default_rng(1)
    model = quantize(concat_image_model(rng, 3, [4, 4], False, True), "qop")
    node = next(i for i, n in enumerate(model.graph.node) if n.op_type == "QLinearConcat")
    with pytest.raises(CompileError, match=r"node 'concat.*' \(QLinearConcat\): attribute axis=0 is not supported"):
        compile(with_attribute(model, node, "axis", 0), "small")
    with pytest.raises(CompileError, match=r"\(QLinearConcat\): attribute axis=2 is not supported"):
        compile(with_attribute(model, node, "axis", 2), "small")
    model = quantize(concat_image_model(rng, 3, [3, 4], False, False), "qdq")
    with pytest.raises(CompileError, match=r"node 'concat.*' \(Concat\): input .* would start at output channel 3, "
                                           r"which is not a multiple of 4.*\[3, 4\]"):
        compile(model, "small")


# --- AveragePool ----------------------------------------------------------------------------------

def average_pool_model(rng, c, o, h, w, **attributes):
    """Conv → AveragePool: the pooled tensor is the model output."""
    conv, weight = _conv(rng, "conv", "x", "c", c, o)
    pool = helper.make_node("AveragePool", ["c"], ["y"], name="pool", **attributes)
    return _model([conv, pool], (c, h, w), [weight])


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(1, 6), o=st.integers(1, 9), h=st.integers(2, 8),
       w=st.integers(2, 8), kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       stride=st.tuples(st.integers(1, 2), st.integers(1, 2)), pads=st.tuples(*[st.integers(0, 1)] * 4),
       count_include_pad=st.integers(0, 1), fmt=FORMATS, activations=ACTIVATIONS)
def test_average_pool_equals_onnxruntime(seed, c, o, h, w, kernel, stride, pads, count_include_pad, fmt, activations):
    rng = np.random.default_rng(seed)
    kernel = (min(kernel[0], h), min(kernel[1], w))
    pads = tuple(min(p, k - 1) for p, k in zip(pads, kernel + kernel))  # ONNX: a pad smaller than the kernel
    model = average_pool_model(rng, c, o, h, w, kernel_shape=list(kernel), strides=list(stride), pads=list(pads),
                               count_include_pad=count_include_pad)
    check_against_onnxruntime(model, (c, h, w), fmt, rng, activations=activations)


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_an_average_pool_over_the_whole_image_is_onnxruntimes_global_average(fmt):
    rng = np.random.default_rng(2)
    check_against_onnxruntime(average_pool_model(rng, 3, 6, 4, 5, kernel_shape=[4, 5]), (3, 4, 5), fmt, rng)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), divisor=st.one_of(st.integers(1, 81).map(float),
                                                        st.floats(2.0 ** -12, 8.0, width=32)))
def test_the_vector_engines_divide_as_binary32_does(seed, divisor):
    rng = np.random.default_rng(seed)
    scale = np.float32(2.0 ** rng.uniform(-12, 0))
    numerators = (rng.integers(-255 * 81, 255 * 81, 512) * scale).astype(np.float32)
    numerators[:8] = np.float32(divisor) * np.arange(-4, 4, dtype=np.float32)  # exact quotients
    tenant = new_tenant()
    run_ve(tenant, [Instr("ve.shape", rows=1)] + fp32_division(0x1000, 0, 0x2000, divisor, 512), {0: numerators})
    quotients = tenant.read_sram(0x1000, 512, np.float32)
    assert np.array_equal(quotients, numerators / np.float32(divisor))


def test_divisor_runs_split_a_row_where_the_window_leaves_the_image():
    assert divisor_runs(5, 5, 3, 1, 1, False) == [(0, 1, 2), (1, 4, 3), (4, 5, 2)]
    assert divisor_runs(5, 5, 3, 1, 1, True) == [(0, 5, 3)]
    assert divisor_runs(3, 6, 2, 2, 0, False) == [(0, 3, 2)]


def test_average_pool_refusals_name_the_attribute():
    rng = np.random.default_rng(3)
    model = quantize(average_pool_model(rng, 2, 4, 6, 6, kernel_shape=[2, 2], strides=[2, 2]), "qop")
    node = next(i for i, n in enumerate(model.graph.node) if n.op_type == "QLinearAveragePool")
    for key, value, message in (("ceil_mode", 1, "attribute ceil_mode=1"),
                                ("auto_pad", "SAME_UPPER", "attribute auto_pad=b'SAME_UPPER'"),
                                ("channels_last", 1, "attribute channels_last=1")):
        with pytest.raises(CompileError, match=rf"node 'pool.*' \(QLinearAveragePool\): {message}"):
            compile(with_attribute(model, node, key, value), "small")


# --- Transpose ------------------------------------------------------------------------------------

def transpose_flatten_model(rng, c, h, w, perm):
    """Conv → Transpose(perm) → Flatten → Gemm: a channels-last flatten before a classifier."""
    conv, weight = _conv(rng, "conv", "x", "c", c, 5)
    nodes = [conv, helper.make_node("Transpose", ["c"], ["t"], name="transpose", perm=list(perm)),
             helper.make_node("Flatten", ["t"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "head_w"], ["y"], name="head")]
    return _model(nodes, (c, h, w), [weight, _weight(rng, "head_w", (5 * h * w, 3))])


def transpose_features_model(rng, k, n, perm, batch="N"):
    """Gemm (``k`` → ``n``) → Transpose(perm) → Gemm (→ 3): ``perm = (1, 0)`` needs a fixed batch,
    the second Gemm's depth."""
    depth = n if perm == (0, 1) else batch
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], name="gemm"),
             helper.make_node("Transpose", ["g"], ["t"], name="transpose", perm=list(perm)),
             helper.make_node("Gemm", ["t", "head_w"], ["y"], name="head")]
    return _model(nodes, (k,), [_weight(rng, "w", (k, n)), _weight(rng, "head_w", (depth, 3))], batch)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5),
       perm=st.sampled_from([(0, 2, 3, 1), (0, 1, 3, 2), (0, 3, 1, 2), (0, 1, 2, 3)]), fmt=FORMATS,
       activations=ACTIVATIONS)
def test_a_transpose_before_a_flatten_equals_onnxruntime(seed, c, h, w, perm, fmt, activations):
    rng = np.random.default_rng(seed)
    check_against_onnxruntime(transpose_flatten_model(rng, c, h, w, perm), (c, h, w), fmt, rng,
                              activations=activations)


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_an_identity_transpose_of_features_equals_onnxruntime(fmt):
    rng = np.random.default_rng(4)
    check_against_onnxruntime(transpose_features_model(rng, 7, 6, (0, 1)), (7,), fmt, rng, batch=3)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 9), k=st.integers(1, 9), n=st.integers(1, 11),
       fmt=FORMATS, activations=ACTIVATIONS)
def test_a_matrix_transpose_equals_onnxruntime(seed, batch, k, n, fmt, activations):
    rng = np.random.default_rng(seed)
    model = transpose_features_model(rng, k, n, (1, 0), batch=batch)
    samples = [{"x": rng.standard_normal((batch, k)).astype(np.float32)} for _ in range(3)]
    quantized = quantize(model, fmt, samples, activations=activations)
    x = rng.standard_normal((batch, k)).astype(np.float32) * 1.5
    compiled = compile(quantized, "small")
    assert "Transpose" in [layer["op"] for layer in compiled.layers]
    assert np.array_equal(compiled.run({"x": x})["y"], onnxruntime_outputs(quantized, {"x": x})["y"])


def test_transposes_that_move_data_are_refused_with_the_perm():
    rng = np.random.default_rng(6)
    conv, weight = _conv(rng, "conv", "x", "c", 2, 4)
    nodes = [conv, helper.make_node("Transpose", ["c"], ["t"], name="transpose", perm=[1, 0, 2, 3]),
             helper.make_node("Flatten", ["t"], ["y"], name="flatten")]
    model = quantize(_model(nodes, (2, 4, 4), [weight], batch=2), "qdq",
                     rng.standard_normal((2, 2, 4, 4)).astype(np.float32))
    with pytest.raises(CompileError, match=r"node 'transpose.*' \(Transpose\): attribute perm=\[1, 0, 2, 3\] moves "
                                           r"the batch axis"):
        compile(model, "small")
    conv, weight = _conv(rng, "conv", "x", "c", 2, 4)
    nodes = [conv, helper.make_node("Transpose", ["c"], ["t"], name="transpose", perm=[0, 1, 3, 2]),
             helper.make_node("MaxPool", ["t"], ["y"], name="pool", kernel_shape=[2, 2])]
    model = quantize(_model(nodes, (2, 4, 4), [weight]), "qop")
    with pytest.raises(CompileError, match=r"node 'transpose.*' \(Transpose\): attribute perm=\[0, 1, 3, 2\]: a "
                                           r"transposed rank-4 tensor is supported only when a Flatten"):
        compile(model, "small")


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_a_small_scratchpad_splits_concat_and_pooling_into_race_free_blocks(fmt):
    rng = np.random.default_rng(7)
    conv, weight = _conv(rng, "conv", "x", "c", 3, 8)
    nodes = [conv, helper.make_node("AveragePool", ["c"], ["p"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["p", "x"], ["y"], name="concat", axis=1)]
    model = quantize(_model(nodes, (3, 12, 12), [weight]), fmt,
                     [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(4)])
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    compiled = compile(model, "small", batch=2, sram_kib=8)
    utops = {layer["op"]: layer["utops"] for layer in compiled.layers}
    pool = next(value for key, value in utops.items() if "AveragePool" in key)
    assert pool["VE"] > 2 and check_program(compiled.image).races == []
    assert np.array_equal(compiled.run({"x": x})["y"], onnxruntime_outputs(model, {"x": x})["y"])


# --- on the RTL -----------------------------------------------------------------------------------

def _rtl_models():
    from test_compiler import binary_model

    from tcloud.runtime.compiler.zoo import builders

    rng = np.random.default_rng(5)
    return {
        "residual_add_uint8": (builders.resnet50_block(channels=16, width=4, size=5), "qdq", "uint8"),
        "mul_by_channel_constant": (binary_model(rng, "Mul", 6, 5, (6, 1, 1)), "qop", "int8"),
        "mul_of_two_activations": (binary_model(rng, "Mul", 5, 0, None), "qdq", "uint8"),
        "concat_with_tables": (concat_image_model(rng, 4, [4, 8], True, False), "qdq", "int8"),
        "average_pool": (average_pool_model(rng, 3, 5, 6, 6, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                            count_include_pad=0), "qop", "uint8"),
        "matrix_transpose": (transpose_features_model(rng, 5, 7, (1, 0), batch=3), "qdq", "int8"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_rtl_models()))
def test_the_vector_engine_kernels_on_verilator_equal_onnxruntime(name):
    """Add/Mul (ve.fma), Concat (tables), AveragePool (binary32 division) and the matrix transpose,
    compiled for `small` and run on the Verilator RTL."""
    model, fmt, activations = _rtl_models()[name]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    shape, calibration_batch = dims[1:], dims[0] or 1
    rng = np.random.default_rng(6)
    samples = [{model.graph.input[0].name: rng.standard_normal([calibration_batch, *shape]).astype(np.float32)}
               for _ in range(4)]
    quantized = quantize(model, fmt, samples, activations=activations)
    x = rng.standard_normal([3, *shape]).astype(np.float32) * 1.5
    ref = next(iter(onnxruntime_outputs(quantized, {model.graph.input[0].name: x}).values()))
    compiled = compile(quantized, "small", batch=3)
    out = next(iter(compiled.run({model.graph.input[0].name: x}, backend="verilator").values()))
    assert np.array_equal(out, ref)
