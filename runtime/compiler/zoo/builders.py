"""Float ONNX models of realistic shapes with seeded random weights, and their int8 versions.

The compiler is tested on the layer shapes of real networks, not on their trained weights, so
every builder draws its weights from ``numpy.random.default_rng(seed)``: the same arguments give
the same model. Every model has a dynamic batch dimension ``N`` on its input and output.

- :func:`resnet50` and :func:`resnet50_block`: ResNet-50 v1.5 (stride on the 3x3 convolution of
  a bottleneck), batch normalisation folded into each convolution's weights and bias;
- :func:`mobilenetv2` and :func:`mobilenetv2_block`: MobileNetV2 (width 1.0), ReLU6 as ``Clip``;
- :func:`dlrm_mlp`: the dense part of a DLRM recommender, bottom MLP 13->512->256->64 and top
  MLP 64->512->256->1 with a ``Sigmoid``, without the embedding tables;
- :func:`quantize`: onnxruntime's ``quantize_static`` in QDQ or QOperator format, int8 activations
  and weights, calibrated on given samples or on seeded random ones.
"""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
"""ONNX opset of every zoo model (``Clip`` takes its bounds as inputs since opset 11)."""
IR_VERSION = 9
"""ONNX IR version of every zoo model: onnxruntime 1.15 and later load it."""
BN_EPS = 1e-5


class Graph:
    """A graph under construction: nodes and initializers with generated unique names.

    Parameters
    ----------
    name : str
        The graph's name.
    seed : int
        Seed of the random weights that :func:`conv_bn` and :func:`dense` draw.
    """

    def __init__(self, name, seed=0):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.initializers = []
        self._count = {}

    def fresh(self, prefix):
        """A name not used before in this graph: ``prefix``, then ``prefix_1``, ``prefix_2``..."""
        n = self._count.get(prefix, 0)
        self._count[prefix] = n + 1
        return prefix if n == 0 else f"{prefix}_{n}"

    def const(self, name, array):
        """Add ``array`` as an initializer; return its (fresh) name."""
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, name=None, **attrs):
        """Add one node with a single output; return the output's name (the node's name)."""
        name = self.fresh(name or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def conv(self, x, weight, bias, stride=1, group=1):
        """``Conv`` with "same" padding ``k // 2`` of ``weight`` [out, in/group, k, k] and ``bias``."""
        k = weight.shape[-1]
        return self.op("Conv", [x, self.const("w", weight.astype(np.float32)),
                                self.const("b", bias.astype(np.float32))],
                       name="conv", kernel_shape=[k, k], strides=[stride, stride],
                       pads=[k // 2] * 4, group=group)

    def gemm(self, x, weight, bias):
        """``Gemm`` y = x @ weight.T + bias, ``weight`` [out, in] as PyTorch exports ``Linear``."""
        return self.op("Gemm", [x, self.const("w", weight.astype(np.float32)),
                                self.const("b", bias.astype(np.float32))],
                       name="gemm", transB=1)

    def model(self, inputs, outputs, doc=""):
        """The finished ``onnx.ModelProto``.

        Parameters
        ----------
        inputs, outputs : list of (str, list)
            Name and shape of each graph input and output; ``"N"`` marks the batch dimension.
            An output is renamed ``"output"`` (several: ``"output_1"``...) in every node.
        doc : str
            The model's ``doc_string``.
        """
        def value(name, shape):
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

        renamed = {old: "output" if i == 0 else f"output_{i}" for i, (old, _) in enumerate(outputs)}
        for node in self.nodes:
            node.input[:] = [renamed.get(n, n) for n in node.input]
            node.output[:] = [renamed.get(n, n) for n in node.output]
        outputs = [(renamed[old], shape) for old, shape in outputs]

        graph = helper.make_graph(self.nodes, self.name, [value(*i) for i in inputs],
                                  [value(*o) for o in outputs], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  ir_version=IR_VERSION, producer_name="tcloud.zoo",
                                  doc_string=doc)
        return model


def conv_bn(g, x, cin, cout, k, stride=1, group=1, act="relu"):
    """A convolution followed by batch normalisation folded into it, then an activation.

    The weights are He-normal; the batch-norm statistics and affine parameters are random too and
    folded as inference does: ``w * gamma / sqrt(var + eps)`` and ``beta - mean * that scale``.

    Parameters
    ----------
    g : Graph
    x : str
        Input tensor name, [N, cin, H, W].
    cin, cout, k, stride, group : int
        Channels in and out, square kernel size, stride, groups (``group == cin`` is depthwise).
    act : {"relu", "relu6", None}
        ``Relu``, ``Clip(0, 6)`` or nothing.

    Returns
    -------
    str
        Output tensor name.
    """
    fan_in = cin // group * k * k
    w = g.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // group, k, k))
    gamma = g.rng.uniform(0.5, 1.0, cout)
    beta = g.rng.normal(0.0, 0.1, cout)
    mean = g.rng.normal(0.0, 0.1, cout)
    var = g.rng.uniform(0.5, 1.5, cout)
    scale = gamma / np.sqrt(var + BN_EPS)
    y = g.conv(x, w * scale[:, None, None, None], beta - mean * scale, stride, group)
    return activation(g, y, act)


def dense(g, x, fin, fout, act="relu"):
    """A ``Gemm`` layer ``fin -> fout`` with He-normal weights and a small random bias, then ``act``."""
    w = g.rng.normal(0.0, np.sqrt(2.0 / fin), (fout, fin))
    b = g.rng.normal(0.0, 0.1, fout)
    return activation(g, g.gemm(x, w, b), act)


def activation(g, x, act):
    """``Relu`` (``"relu"``), ``Clip(0, 6)`` (``"relu6"``), ``Sigmoid`` or nothing (``None``)."""
    if act is None:
        return x
    if act == "relu":
        return g.op("Relu", [x])
    if act == "relu6":
        lo = g.const("clip_min", np.array(0.0, np.float32))
        hi = g.const("clip_max", np.array(6.0, np.float32))
        return g.op("Clip", [x, lo, hi], name="relu6")
    if act == "sigmoid":
        return g.op("Sigmoid", [x])
    raise ValueError(f"unknown activation {act!r}")


def classifier_head(g, x, channels, classes):
    """``GlobalAveragePool`` -> ``Flatten`` -> ``Gemm`` to ``classes`` logits."""
    x = g.op("GlobalAveragePool", [x], name="gap")
    x = g.op("Flatten", [x], axis=1)
    return dense(g, x, channels, classes, act=None)


# ---------------------------------------------------------------- ResNet-50

RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
"""(width, blocks, stride of the first block) of each ResNet-50 stage; out channels = 4 * width."""


def bottleneck(g, x, cin, width, stride=1):
    """A ResNet bottleneck: 1x1 ``width`` -> 3x3 ``width`` (``stride``) -> 1x1 ``4 * width``,
    plus the shortcut (a strided 1x1 projection when the shape changes), then ``Relu``."""
    cout = 4 * width
    y = conv_bn(g, x, cin, width, 1)
    y = conv_bn(g, y, width, width, 3, stride)
    y = conv_bn(g, y, width, cout, 1, act=None)
    shortcut = x if stride == 1 and cin == cout else conv_bn(g, x, cin, cout, 1, stride, act=None)
    return g.op("Relu", [g.op("Add", [y, shortcut])])


def resnet50(image_size=224, classes=1000, seed=0):
    """ResNet-50 v1.5, batch norm folded: input ``[N, 3, S, S]``, output logits ``[N, classes]``.

    Parameters
    ----------
    image_size : int
        Spatial size ``S`` of the input (224 for the real network; a multiple of 32).
    classes : int
        Width of the final ``Gemm``.
    seed : int
        Seed of the random weights.

    Returns
    -------
    onnx.ModelProto
        53 ``Conv`` (4 of them shortcut projections), 49 ``Relu``, 16 ``Add``, ``MaxPool``,
        ``GlobalAveragePool``, ``Flatten``, ``Gemm``: 122 nodes, about 25.5 M parameters.
    """
    g = Graph("resnet50", seed)
    x = conv_bn(g, "input", 3, 64, 7, 2)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for width, blocks, stride in RESNET50_STAGES:
        for i in range(blocks):
            x = bottleneck(g, x, cin, width, stride if i == 0 else 1)
            cin = 4 * width
    logits = classifier_head(g, x, cin, classes)
    return g.model([("input", ["N", 3, image_size, image_size])], [(logits, ["N", classes])],
                   "ResNet-50 v1.5, random weights, batch norm folded")


def resnet50_block(channels=256, width=64, size=56, stride=1, seed=0):
    """One ResNet-50 bottleneck block: input ``[N, channels, size, size]``.

    Parameters
    ----------
    channels : int
        Input channels. With ``channels == 4 * width`` and ``stride == 1`` the shortcut is the
        identity; otherwise it is a 1x1 projection (the first block of a stage).
    width : int
        Bottleneck width; the block outputs ``4 * width`` channels.
    size : int
        Input height and width.
    stride : int
        Stride of the 3x3 convolution and of the projection.
    seed : int
        Seed of the random weights.

    Returns
    -------
    onnx.ModelProto
        Output ``[N, 4 * width, ceil(size / stride), ceil(size / stride)]``. The defaults are a
        stage-1 block of the real network (256 channels, 56 x 56).
    """
    g = Graph("resnet50_block", seed)
    y = bottleneck(g, "input", channels, width, stride)
    out = -(-size // stride)
    return g.model([("input", ["N", channels, size, size])], [(y, ["N", 4 * width, out, out])],
                   f"ResNet-50 bottleneck block {channels}->{width}->{4 * width}, stride {stride}")


# ---------------------------------------------------------------- MobileNetV2

MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
"""(expansion t, out channels c, blocks n, stride s of the first block) of MobileNetV2."""


def inverted_residual(g, x, cin, cout, expansion, stride=1):
    """A MobileNetV2 block: 1x1 expand (ReLU6; absent when ``expansion == 1``) -> 3x3 depthwise
    (``stride``, ReLU6) -> 1x1 project (linear), plus ``x`` when the shape is unchanged."""
    hidden = cin * expansion
    y = conv_bn(g, x, cin, hidden, 1, act="relu6") if expansion != 1 else x
    y = conv_bn(g, y, hidden, hidden, 3, stride, group=hidden, act="relu6")
    y = conv_bn(g, y, hidden, cout, 1, act=None)
    return g.op("Add", [y, x]) if stride == 1 and cin == cout else y


def mobilenetv2(image_size=224, classes=1000, seed=0):
    """MobileNetV2 (width 1.0), batch norm folded: ``[N, 3, S, S]`` -> logits ``[N, classes]``.

    Parameters
    ----------
    image_size : int
        Spatial size ``S`` of the input (224 for the real network; a multiple of 32).
    classes : int
        Width of the final ``Gemm``.
    seed : int
        Seed of the random weights.

    Returns
    -------
    onnx.ModelProto
        52 ``Conv`` (17 of them depthwise), 35 ``Clip`` (ReLU6), 10 ``Add``,
        ``GlobalAveragePool``, ``Flatten``, ``Gemm``; about 3.5 M parameters.
    """
    g = Graph("mobilenetv2", seed)
    x = conv_bn(g, "input", 3, 32, 3, 2, act="relu6")
    cin = 32
    for t, c, n, s in MOBILENETV2_STAGES:
        for i in range(n):
            x = inverted_residual(g, x, cin, c, t, s if i == 0 else 1)
            cin = c
    x = conv_bn(g, x, cin, 1280, 1, act="relu6")
    logits = classifier_head(g, x, 1280, classes)
    return g.model([("input", ["N", 3, image_size, image_size])], [(logits, ["N", classes])],
                   "MobileNetV2 1.0, random weights, batch norm folded")


def mobilenetv2_block(channels=32, expansion=6, size=28, stride=1, out_channels=None, seed=0):
    """One MobileNetV2 inverted-residual block: input ``[N, channels, size, size]``.

    Parameters
    ----------
    channels : int
        Input channels.
    expansion : int
        Hidden channels are ``channels * expansion``.
    size : int
        Input height and width.
    stride : int
        Stride of the depthwise convolution.
    out_channels : int, optional
        Output channels; default ``channels``. The residual ``Add`` is there only when
        ``stride == 1`` and ``out_channels == channels``.
    seed : int
        Seed of the random weights.

    Returns
    -------
    onnx.ModelProto
        Output ``[N, out_channels, ceil(size / stride), ceil(size / stride)]``. The defaults are
        a block of the real network's third stage (32 channels, 28 x 28, hidden 192).
    """
    cout = channels if out_channels is None else out_channels
    g = Graph("mobilenetv2_block", seed)
    y = inverted_residual(g, "input", channels, cout, expansion, stride)
    out = -(-size // stride)
    return g.model([("input", ["N", channels, size, size])], [(y, ["N", cout, out, out])],
                   f"MobileNetV2 inverted residual {channels}->{channels * expansion}->{cout}")


# ---------------------------------------------------------------- DLRM

def dlrm_mlp(bottom=(13, 512, 256, 64), top=(512, 256, 1), seed=0):
    """The MLP tower of a DLRM recommender, without embeddings: ``[N, 13]`` -> ``[N, 1]``.

    The bottom MLP takes the dense features (``Gemm`` + ``Relu`` layers); the top MLP takes its
    output (in a full DLRM, concatenated with the embedding interactions) through ``Gemm`` +
    ``Relu`` layers, the last one linear and followed by ``Sigmoid`` (click probability).

    Parameters
    ----------
    bottom : tuple of int
        Widths of the bottom MLP, the dense feature count first (Criteo: 13 -> 512 -> 256 -> 64).
    top : tuple of int
        Output widths of the top MLP's layers; its input is ``bottom[-1]``.
    seed : int
        Seed of the random weights.

    Returns
    -------
    onnx.ModelProto
        Input ``dense`` ``[N, bottom[0]]``, output ``[N, top[-1]]``.
    """
    g = Graph("dlrm_mlp", seed)
    x = "dense"
    widths = list(bottom) + list(top)
    for i, (fin, fout) in enumerate(zip(widths, widths[1:])):
        last = i == len(widths) - 2
        x = dense(g, x, fin, fout, act="sigmoid" if last else "relu")
    return g.model([("dense", ["N", bottom[0]])], [(x, ["N", top[-1]])],
                   "DLRM-style MLP tower (bottom and top MLPs, no embeddings), random weights")


def op_types(model):
    """``{(domain, op_type): count}`` of the nodes of ``model``'s main graph, sorted by name.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    dict
        The empty domain (standard ONNX) is ``""``; onnxruntime's own ops are ``"com.microsoft"``.
    """
    counts = {}
    for node in model.graph.node:
        key = (node.domain, node.op_type)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
