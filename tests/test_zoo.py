"""The compiler's model zoo: the committed digits models and the seeded ResNet/MobileNet/DLRM builders."""

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tcloud.runtime import InputError, compile
from tcloud.runtime.compiler.quantize import quantize, random_samples
from tcloud.runtime.compiler.zoo import builders, digits, transformers
from tcloud.verif.races import check_program

# quantize_static logs a pre-processing hint and a QOperator-on-x64 performance hint on every call
logging.getLogger().setLevel(logging.ERROR)


def run(model, x):
    """onnxruntime with int8 QDQ fusion allowed (its default only on CPUs with VNNI; see
    ``test_compiler.onnxruntime_outputs``)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def output_shape(model, batch):
    return [d.dim_value or batch for d in model.graph.output[0].type.tensor_type.shape.dim]


def input_batch(model, batch, seed=1):
    shape = [d.dim_value or batch for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def domain_ops(model):
    return {op for _, op in builders.op_types(model)}


# ---------------------------------------------------------------- the committed digits models

@pytest.mark.parametrize("name", digits.NAMES)
def test_digits_accuracy_is_the_recorded_one(name):
    model = digits.load(name)
    onnx.checker.check_model(model)
    x, y = digits.held_out(name)
    assert digits.accuracy(model, x, y) == pytest.approx(digits.ACCURACY[name], abs=1e-12)


def test_digits_int8_close_to_float():
    for arch in ("mlp", "cnn"):
        assert digits.ACCURACY[f"digits_{arch}"] >= 0.95
        for fmt in ("qdq", "qop"):
            assert digits.ACCURACY[f"digits_{arch}_{fmt}"] >= digits.ACCURACY[f"digits_{arch}"] - 0.01


def test_digits_data_shapes():
    x, y = digits.held_out("digits_cnn")
    assert x.shape == (360, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert sorted(set(y.tolist())) == list(range(10))
    x_mlp, y_mlp = digits.held_out("digits_mlp_qop")
    assert x_mlp.shape == (360, 64) and np.array_equal(x_mlp, x.reshape(360, 64))
    assert np.array_equal(y, y_mlp)
    assert digits.calibration("mlp").shape == (digits.CALIBRATION, 64)
    with pytest.raises(KeyError):
        digits.load("digits_rnn")


@pytest.mark.parametrize("name", digits.NAMES)
def test_digits_dynamic_batch(name):
    model = digits.load(name)
    x, _ = digits.held_out(name)
    assert run(model, x[:1]).shape == (1, 10)
    assert np.array_equal(run(model, x[:3]), run(model, x)[:3])


def test_digits_quantized_formats():
    """What each format is made of: the compiler's front end handles exactly these."""
    for arch in ("mlp", "cnn"):
        qdq, qop = (domain_ops(digits.load(f"digits_{arch}_{f}")) for f in ("qdq", "qop"))
        assert {"QuantizeLinear", "DequantizeLinear", "Gemm"} <= qdq
        assert not any(op.startswith("QLinear") or op == "QGemm" for op in qdq)
        assert "Relu" not in qdq and "Relu" not in qop    # folded into the output quantization
        assert {"QuantizeLinear", "DequantizeLinear", "QGemm"} <= qop
    assert "QLinearConv" in domain_ops(digits.load("digits_cnn_qop"))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_digits_qdq_and_qop_agree(arch):
    """onnxruntime's CPU provider runs both formats with the same int8 kernels: one reference."""
    x, _ = digits.held_out(arch)
    assert np.array_equal(run(digits.load(f"digits_{arch}_qdq"), x),
                          run(digits.load(f"digits_{arch}_qop"), x))


def test_cnn_trainer_gradients():
    """The numpy CNN trainer's analytic gradients match central differences."""
    rng = np.random.default_rng(1)
    x, y = rng.random((3, 1, 8, 8)), np.array([1, 4, 7])
    shapes = [(8, 1, 3, 3), (16, 8, 3, 3), (10, 256)]
    params = [(rng.normal(0, 0.3, s), rng.normal(0, 0.1, s[0])) for s in shapes]
    _, grads = digits._cnn_gradients(params, x, y)
    for layer, grad in zip(params, grads):
        for array, g in zip(layer, grad):
            for _ in range(4):
                i = tuple(rng.integers(0, n) for n in array.shape)
                old = array[i]
                array[i] = old + 1e-6
                plus, _ = digits._cnn_gradients(params, x, y)
                array[i] = old - 1e-6
                minus, _ = digits._cnn_gradients(params, x, y)
                array[i] = old
                assert (plus - minus) / 2e-6 == pytest.approx(g[i], rel=1e-4, abs=1e-7)


@pytest.mark.slow
def test_digits_regenerate(tmp_path):
    """Regeneration (about 15 s) reaches the recorded accuracies. The files come out byte for byte
    where NumPy's matrix products round as on the machine that made them; elsewhere (the MLP's
    trainer on a CPU with AVX2 and no AVX-512, for one) rounding differences grow over its epochs to
    about 0.1 % of the weights, so the test then asks for the recorded accuracies (exact) and the same
    graph (operators, initializer names, shapes and types), and for the same bytes only when the
    float weights came out identical."""
    assert digits.build(tmp_path) == pytest.approx(digits.ACCURACY, abs=1e-12)
    for name in digits.NAMES:
        made, shipped = onnx.load(tmp_path / f"{name}.onnx"), onnx.load(digits.HERE / f"{name}.onnx")
        if made.SerializeToString() == shipped.SerializeToString():
            continue
        float_model = name.removesuffix("_qdq").removesuffix("_qop")
        assert (tmp_path / f"{float_model}.onnx").read_bytes() != (digits.HERE / f"{float_model}.onnx").read_bytes(), \
            f"{name} differs although its float model came out identical"
        assert [n.op_type for n in made.graph.node] == [n.op_type for n in shipped.graph.node]
        def layout(model):
            return {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}

        assert layout(made) == layout(shipped), name


# ---------------------------------------------------------------- the builders

SMALL = {
    "resnet50_block": lambda: builders.resnet50_block(size=8),
    "resnet50_block_stride2": lambda: builders.resnet50_block(channels=64, width=32, size=9, stride=2),
    "mobilenetv2_block": lambda: builders.mobilenetv2_block(size=8),
    "mobilenetv2_block_t1_stride2": lambda: builders.mobilenetv2_block(
        channels=16, expansion=1, size=8, stride=2, out_channels=24),
    "dlrm_mlp": builders.dlrm_mlp,
}


@pytest.mark.parametrize("fmt", [None, "qdq", "qop"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_builder_runs(name, fmt):
    model = SMALL[name]()
    onnx.checker.check_model(model, full_check=True)
    quantized = model if fmt is None else quantize(model, fmt)
    onnx.checker.check_model(quantized)
    for batch in (1, 2):
        x = input_batch(model, batch)
        y = run(quantized, x)
        assert list(y.shape) == output_shape(model, batch)
        if fmt is not None:   # int8 tracks float (calibrated on the same distribution)
            reference = run(model, x)
            error = np.linalg.norm(y - reference) / np.linalg.norm(reference)
            assert error < 0.1, error


def test_builders_are_seeded():
    assert builders.resnet50_block(size=8).SerializeToString() == \
        builders.resnet50_block(size=8).SerializeToString()
    assert builders.dlrm_mlp(seed=1).SerializeToString() != builders.dlrm_mlp().SerializeToString()


def test_quantize_leaves_its_argument_alone():
    model = builders.dlrm_mlp()
    before = model.SerializeToString()
    quantize(model, "qdq")
    assert model.SerializeToString() == before
    with pytest.raises(ValueError):
        quantize(model, "int4")


def test_block_shapes_and_residuals():
    assert builders.op_types(builders.resnet50_block()) == {("", "Add"): 1, ("", "Conv"): 3, ("", "Relu"): 3}
    projected = builders.resnet50_block(channels=256, width=128, size=56, stride=2)
    assert builders.op_types(projected)[("", "Conv")] == 4
    assert output_shape(projected, 1) == [1, 512, 28, 28]
    assert ("", "Add") not in builders.op_types(builders.mobilenetv2_block(stride=2))
    depthwise = [n for n in builders.mobilenetv2_block().graph.node if n.op_type == "Conv"][1]
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 32 * 6
    assert output_shape(builders.dlrm_mlp(), 4) == [4, 1]


@pytest.mark.parametrize("build, nodes, params", [(builders.resnet50, 122, 25_530_472),
                                                  (builders.mobilenetv2, 100, 3_487_816)])
def test_full_network_structure(build, nodes, params):
    """Node and parameter counts (torchvision's, less batch norm) and shape inference at 224 x 224."""
    model = build()
    assert len(model.graph.node) == nodes
    assert sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.dims) == params
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == ["N", 1000]


def test_mobilenetv2_runs():
    model = builders.mobilenetv2(image_size=64)
    for batch in (1, 2):
        assert run(model, input_batch(model, batch)).shape == (batch, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("build", [builders.resnet50, builders.mobilenetv2])
def test_full_network_quantized(build, fmt):
    """The real 224 x 224 networks, quantized (ResNet-50 takes about 15 s per format)."""
    model = build()
    quantized = quantize(model, fmt, random_samples(model, count=2))
    x = input_batch(model, 2)
    assert run(quantized, x).shape == (2, 1000)


# ---------------------------------------------------------------- compiled, against onnxruntime

def _int8_options():
    """onnxruntime as the compiler's exactness tests run it (int8 QDQ fusion allowed)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    return options


def onnxruntime_int8(model, x):
    session = ort.InferenceSession(model.SerializeToString(), _int8_options(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_compiled_equals_onnxruntime(model, fmt, batch, samples=2, **options):
    quantized = quantize(model, fmt, random_samples(model, count=samples))
    compiled = compile(quantized, "small", batch=batch, **options)
    x = input_batch(model, batch)
    got = next(iter(compiled.run({model.graph.input[0].name: x}).values()))
    assert np.array_equal(got, onnxruntime_int8(quantized, x))
    return compiled


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_builders_compile_and_equal_onnxruntime(name, fmt):
    """Every block (residual Add, depthwise, projection shortcut) and the DLRM tower, batch 2, in a
    64 KiB scratchpad (the kernels split their work into several double-buffered blocks); the race
    checker passes."""
    compiled = assert_compiled_equals_onnxruntime(SMALL[name](), fmt, batch=2, sram_kib=64)
    assert check_program(compiled.image).races == []
    for layer in compiled.layers:
        assert layer["macs"] + layer["ve_elements"] > 0 and sum(layer["utops"].values()) > 0, layer
    if name.startswith("resnet50_block"):
        assert sum(layer["op"] in ("Add", "QLinearAdd") for layer in compiled.layers) == 1


@pytest.mark.parametrize("build, fmt", [(builders.resnet50, "qdq"), (builders.mobilenetv2, "qop")])
def test_full_networks_compile_and_equal_onnxruntime_at_32_pixels(build, fmt):
    """All 53 convolutions, 16 residual Adds, pooling and the classifier of ResNet-50 (MobileNetV2: 52
    convolutions, 17 of them depthwise, and 10 Adds), at a 32 x 32 input so the functional run stays short."""
    compiled = assert_compiled_equals_onnxruntime(build(image_size=32, classes=10), fmt, batch=1)
    adds = sum(layer["op"] in ("Add", "QLinearAdd") for layer in compiled.layers)
    assert adds == (16 if build is builders.resnet50 else 10)


@pytest.mark.slow
@pytest.mark.parametrize("build", [builders.resnet50, builders.mobilenetv2])
def test_full_networks_at_224_pixels_compile_and_equal_onnxruntime(build):
    """The real networks (ResNet-50: 25 s to compile, 45 s on the functional backend)."""
    assert_compiled_equals_onnxruntime(build(), "qdq", batch=1, samples=1)


# ---------------------------------------------------------------- Transformers and recommenders

TRANSFORMERS = {
    "bert_tiny": lambda: transformers.bert_encoder(),
    "decoder_block": lambda: transformers.decoder_block(),
    "dlrm": lambda: transformers.dlrm(),
    "ncf": lambda: transformers.ncf(),
}


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_transformer_and_recommender_builders_run_and_quantize(name, fmt):
    """Each builder is valid ONNX, runs with a dynamic batch, and onnxruntime's int8 version tracks the
    float model (random weights, calibrated on 32 random samples: within 10 % relative error, the
    DLRM within 25 %: its random top MLP amplifies the int8 error of the interactions)."""
    model = TRANSFORMERS[name]()
    onnx.checker.check_model(model, full_check=True)
    quantized = quantize(model, fmt, random_samples(model, count=32))
    for batch in (1, 3):
        feeds = {k: np.repeat(v, batch, axis=0) for k, v in random_samples(model, 1, seed=5)[0].items()}
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        reference = session.run(None, feeds)[0]
        y = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert y.shape == reference.shape and y.shape[0] == batch
        assert np.linalg.norm(y - reference) / np.linalg.norm(reference) < (0.25 if name == "dlrm" else 0.1)


def test_random_ids_are_valid_rows_of_every_table():
    samples = random_samples(transformers.dlrm(tables=(7, 1000)), count=50)
    ids = np.concatenate([s["sparse_1"] for s in samples])
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() == 6


def test_bert_shapes():
    tiny = transformers.bert_encoder(seq=8)
    assert builders.op_types(tiny)[("", "LayerNormalization")] == 1 + 2 * transformers.BERT_TINY.layers
    assert builders.op_types(tiny)[("", "Softmax")] == transformers.BERT_TINY.layers
    with pytest.raises(ValueError, match="sequence length 65"):
        transformers.bert_encoder(seq=65)


@pytest.mark.slow
def test_bert_base_has_bert_base_parameters():
    """12 layers of hidden 768: 85 M encoder weights plus 23.8 M of embeddings (no token types, no pooler)."""
    shape, seq = transformers.BERT_BASE, 128
    model = transformers.bert_encoder(transformers.BERT_BASE, seq=seq)
    h, f = shape.hidden, shape.ffn
    per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
    scalars = 4  # per layer: GELU's √2, 1 and 1/2, attention's √d
    expected = shape.vocab * h + seq * h + 2 * h + shape.layers * (per_layer + scalars)
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert sum(int(np.prod(t.dims)) for t in floats) == expected


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("name", ["ncf", "dlrm"])
def test_recommenders_compile_and_equal_onnxruntime(name, fmt):
    """Embedding lookups by dma.gather (ids checked on the host, rows in hardware), NCF's GMF product and
    MLP, DLRM's interaction and MLPs: bit for bit."""
    model = {"ncf": lambda: transformers.ncf(users=50, items=60),
             "dlrm": lambda: transformers.dlrm(tables=(30, 40, 20, 10))}[name]()
    quantized = quantize(model, fmt, random_samples(model, count=16))
    compiled = compile(quantized, "small", batch=8)
    feeds = compiled.random_inputs(seed=3)
    session = ort.InferenceSession(quantized.SerializeToString(), _int8_options(), providers=["CPUExecutionProvider"])
    assert np.array_equal(compiled.run(feeds)["output"], session.run(None, feeds)[0])
    assert sum(layer["op"] == "Gather" for layer in compiled.layers) == 4
    assert check_program(compiled.image).races == []
    bad = dict(feeds)
    first = next(spec for spec in compiled.inputs if spec.get("ids"))
    bad[first["name"]] = np.full(first["shape"], first["bound"])
    with pytest.raises(InputError, match=rf"input '{first['name']}': id {first['bound']} is outside"):
        compiled.run(bad)


@pytest.mark.parametrize("name", ["bert_tiny", "decoder_block"])
def test_transformers_compile_and_track_onnxruntime(name):
    """Embeddings (BERT), attention (heads as views, causal mask for the decoder), softmax and layer norm
    on the VEs, GELU as tables, residuals: the issue's end-to-end bar, the argmax over the hidden features
    agreeing with onnxruntime on >= 99 % of tokens. Measured over 12 × 32 inputs (seeds 0-11): the decoder
    block 99.94 % of the outputs exact, 99.996 % within one step, argmax 100 %; BERT-tiny 99.65 %, 99.97 %,
    at most three steps, argmax 99.97 %. This seed is within two steps."""
    model = TRANSFORMERS[name]()
    quantized = quantize(model, "qdq", random_samples(model, count=32))
    compiled = compile(quantized, "small", batch=32)
    feeds = compiled.random_inputs(seed=5)
    session = ort.InferenceSession(quantized.SerializeToString(), _int8_options(), providers=["CPUExecutionProvider"])
    reference = session.run(None, feeds)[0]
    got = compiled.run(feeds)["output"]
    steps = np.abs(got.astype(np.float64) - reference) / compiled.outputs[0]["scale"]
    assert np.mean(steps <= 1 + 1e-3) >= 0.999 and steps.max() <= 2 + 1e-3
    assert np.mean(got.argmax(-1) == reference.argmax(-1)) >= 0.99
    assert check_program(compiled.image).races == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert_tiny", "dlrm"])
def test_a_bert_layer_and_a_dlrm_on_verilator_equal_the_golden_model(name):
    """The RTL runs the compiled models (dma.gather, ve.fmav, src2_row, activation matrix products) exactly
    as the golden model does."""
    model = (transformers.bert_encoder(transformers.BertShape(1, 32, 2, 64, 100, 16), seq=8) if name == "bert_tiny"
             else transformers.dlrm(tables=(30, 40, 20, 10)))
    compiled = compile(quantize(model, "qdq", random_samples(model, count=8)), "small", batch=2)
    feeds = compiled.random_inputs(seed=2)
    expected = compiled.run(feeds)
    actual = compiled.run(feeds, backend="verilator")
    assert all(np.array_equal(actual[k], expected[k]) for k in expected)
