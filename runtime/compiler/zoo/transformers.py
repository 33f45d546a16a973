"""Float ONNX models of Transformers and recommenders with seeded random weights.

Same conventions as :mod:`.builders`: the weights come from ``numpy.random.default_rng(seed)``, the
batch dimension is ``N``, and :func:`~.builders.quantize` turns a model into int8 (QDQ or
QOperator). The graphs use the operators a PyTorch export writes (``MatMul`` + ``Add`` for a linear
layer, ``Reshape``/``Transpose`` for attention heads, ``LayerNormalization`` (opset 17), ``Softmax``
over the last axis, GELU as ``x · 0.5 · (1 + Erf(x / √2))``, ``Gather`` for embeddings).

- :func:`bert_encoder`: BERT-style encoder (token and position embeddings, ``layers`` encoder
  layers); :data:`BERT_BASE` and :data:`BERT_TINY` give the shapes;
- :func:`decoder_block`: one Transformer decoder block (causal self-attention and a feed-forward
  network, pre-layer-norm as in GPT-2);
- :func:`dlrm`: DLRM with embedding tables, bottom and top MLPs and the pairwise dot-product
  feature interaction;
- :func:`ncf`: Neural Collaborative Filtering (GMF and MLP towers over user and item embeddings).
"""

import math
from dataclasses import dataclass

import numpy as np

from .builders import Graph


@dataclass(frozen=True)
class BertShape:
    """The shape of a BERT-style encoder."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int


BERT_BASE = BertShape(layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, max_positions=512)
"""BERT-base: 12 layers, hidden 768, 12 heads, feed-forward 3072, WordPiece vocabulary."""
BERT_TINY = BertShape(layers=2, hidden=64, heads=2, ffn=256, vocab=512, max_positions=64)
"""A tiny encoder for RTL tests."""
MASKED = 20.0
"""What the causal mask subtracts from a masked attention score: exp(-20) is below an int8 step of
any softmax output, and a small magnitude keeps the int8 range of the masked scores useful (-1e4
would leave a handful of codes for the real scores)."""


def _weight(g, *shape, scale=None):
    scale = 1 / math.sqrt(shape[0]) if scale is None else scale
    return (g.rng.standard_normal(shape) * scale).astype(np.float32)


def linear(g, x, fin, fout):
    """``x @ W + b`` as ``MatMul`` + ``Add`` (``W`` ``[fin, fout]``), as PyTorch exports a linear layer
    applied to a rank-3 tensor."""
    y = g.op("MatMul", [x, g.const("w", _weight(g, fin, fout))], name="matmul")
    return g.op("Add", [y, g.const("b", _weight(g, fout, scale=0.1))], name="bias")


def layer_norm(g, x, width, epsilon=1e-5):
    """``LayerNormalization`` over the last axis with random scale around 1 and shift around 0."""
    gamma = (1 + 0.1 * g.rng.standard_normal(width)).astype(np.float32)
    return g.op("LayerNormalization", [x, g.const("gamma", gamma), g.const("beta", _weight(g, width, scale=0.1))],
                name="layernorm", axis=-1, epsilon=epsilon)


def gelu(g, x):
    """GELU as the exporter writes it: ``x · 0.5 · (1 + Erf(x / √2))``."""
    scaled = g.op("Div", [x, g.const("sqrt2", np.float32(math.sqrt(2)))], name="div")
    erf = g.op("Erf", [scaled])
    one = g.op("Add", [erf, g.const("one", np.float32(1))], name="add")
    return g.op("Mul", [g.op("Mul", [x, one], name="mul"), g.const("half", np.float32(0.5))], name="mul")


def attention(g, x, hidden, heads, seq, mask=None, softmax=True):
    """Multi-head self-attention of ``x`` ``[N, seq, hidden]``: ``softmax(Q·Kᵀ / √d + mask)·V`` per
    head, then the output projection. ``mask`` (``[seq, seq]``, added to the scores) may be ``None``;
    ``softmax=False`` leaves the scores unnormalised (to test the matrix products alone)."""
    head = hidden // heads
    split = g.const("heads_shape", np.array([0, seq, heads, head], np.int64))
    q, k, v = (g.op("Reshape", [linear(g, x, hidden, hidden), split], name=f"{n}_heads") for n in "qkv")
    q = g.op("Transpose", [q], name="q_t", perm=[0, 2, 1, 3])
    k = g.op("Transpose", [k], name="k_t", perm=[0, 2, 3, 1])
    v = g.op("Transpose", [v], name="v_t", perm=[0, 2, 1, 3])
    scores = g.op("MatMul", [q, k], name="scores")
    scores = g.op("Div", [scores, g.const("sqrt_d", np.float32(math.sqrt(head)))], name="scale")
    if mask is not None:
        scores = g.op("Add", [scores, g.const("mask", mask)], name="mask")
    probs = g.op("Softmax", [scores], name="softmax", axis=-1) if softmax else scores
    context = g.op("MatMul", [probs, v], name="context")
    context = g.op("Transpose", [context], name="context_t", perm=[0, 2, 1, 3])
    context = g.op("Reshape", [context, g.const("merge_shape", np.array([0, seq, hidden], np.int64))],
                   name="merge_heads")
    return linear(g, context, hidden, hidden)


def feed_forward(g, x, hidden, ffn):
    """``linear → GELU → linear``."""
    return linear(g, gelu(g, linear(g, x, hidden, ffn)), ffn, hidden)


def bert_encoder(shape=BERT_TINY, seq=16, seed=0):
    """A BERT-style encoder: input ``input_ids`` int64 ``[N, seq]``, output ``[N, seq, hidden]``.

    Embeddings (token ``Gather`` + learned positions, layer norm), then ``shape.layers`` post-layer-norm
    encoder layers (self-attention, residual, layer norm, feed-forward with GELU, residual, layer norm).

    Parameters
    ----------
    shape : BertShape
        :data:`BERT_TINY` (default) or :data:`BERT_BASE`.
    seq : int
        Sequence length (at most ``shape.max_positions``).
    seed : int

    Returns
    -------
    onnx.ModelProto
    """
    if not 1 <= seq <= shape.max_positions:
        raise ValueError(f"sequence length {seq} outside 1..{shape.max_positions}")
    g = Graph("bert_encoder", seed)
    tokens = g.op("Gather", [g.const("word_embeddings", _weight(g, shape.vocab, shape.hidden, scale=0.5)),
                             "input_ids"], name="embed", axis=0)
    positions = _weight(g, 1, seq, shape.hidden, scale=0.1)
    x = layer_norm(g, g.op("Add", [tokens, g.const("positions", positions)], name="add_positions"), shape.hidden)
    for _ in range(shape.layers):
        x = layer_norm(g, g.op("Add", [x, attention(g, x, shape.hidden, shape.heads, seq)], name="residual"),
                       shape.hidden)
        x = layer_norm(g, g.op("Add", [x, feed_forward(g, x, shape.hidden, shape.ffn)], name="residual"),
                       shape.hidden)
    model = g.model([("input_ids", ["N", seq])], [(x, ["N", seq, shape.hidden])],
                    f"BERT-style encoder ({shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads), "
                    f"random weights")
    model.graph.input[0].type.tensor_type.elem_type = 7  # INT64 token ids
    return model


def decoder_block(hidden=64, heads=2, ffn=256, seq=16, seed=0):
    """One pre-layer-norm Transformer decoder block (GPT-2 style): ``[N, seq, hidden]`` in and out.

    ``x + attention(LN(x))`` with a causal mask (``-MASKED`` above the diagonal), then
    ``x + FFN(LN(x))``.
    """
    g = Graph("decoder_block", seed)
    mask = np.triu(np.full((seq, seq), -MASKED, np.float32), k=1)
    x = g.op("Add", ["input", attention(g, layer_norm(g, "input", hidden), hidden, heads, seq, mask)],
             name="residual")
    x = g.op("Add", [x, feed_forward(g, layer_norm(g, x, hidden), hidden, ffn)], name="residual")
    return g.model([("input", ["N", seq, hidden])], [(x, ["N", seq, hidden])],
                   f"Transformer decoder block (hidden {hidden}, {heads} heads, causal), random weights")


def _mlp(g, x, widths, last_activation="Relu"):
    for i, (fin, fout) in enumerate(zip(widths, widths[1:])):
        x = g.gemm(x, _weight(g, fout, fin, scale=1 / math.sqrt(fin)), _weight(g, fout, scale=0.1))
        activation = "Relu" if i < len(widths) - 2 else last_activation
        if activation:
            x = g.op(activation, [x])
    return x


def dlrm(tables=(1000, 1000, 500, 200), dim=16, bottom=(13, 64, 16), top=(64, 32, 1), seed=0):
    """DLRM: dense features through the bottom MLP, one embedding per sparse feature, pairwise dot
    products of all ``len(tables) + 1`` vectors (the strictly lower triangle), then the top MLP with
    a ``Sigmoid``.

    Inputs ``dense`` float ``[N, bottom[0]]`` and ``sparse_0``, ``sparse_1``, ... int64 ``[N]`` (one row
    index per table, as a per-table embedding bag of one id); output ``[N, 1]``.

    Parameters
    ----------
    tables : tuple of int
        Rows of each embedding table.
    dim : int
        Embedding width (= ``bottom[-1]``).
    bottom, top : tuple of int
        MLP widths; the top MLP's input is ``dim`` plus the ``F·(F−1)/2`` interactions (``F`` vectors).
    seed : int
    """
    if bottom[-1] != dim:
        raise ValueError(f"the bottom MLP must end at the embedding width {dim}, not {bottom[-1]}")
    g = Graph("dlrm", seed)
    dense = _mlp(g, "dense", bottom)
    vectors = [g.op("Unsqueeze", [dense, g.const("axis1", np.array([1], np.int64))], name="unsqueeze")]
    for t, rows in enumerate(tables):
        embedded = g.op("Gather", [g.const("table", _weight(g, rows, dim, scale=0.5)), f"sparse_{t}"], name="embed",
                        axis=0)
        vectors.append(g.op("Unsqueeze", [embedded, g.const("axis1", np.array([1], np.int64))], name="unsqueeze"))
    features = len(vectors)
    stacked = g.op("Concat", vectors, name="stack", axis=1)  # [N, F, dim]
    dots = g.op("MatMul", [stacked, g.op("Transpose", [stacked], name="stack_t", perm=[0, 2, 1])],
                name="interact")  # [N, F, F]
    flat = g.op("Reshape", [dots, g.const("flat_shape", np.array([0, features * features], np.int64))],
                name="flatten_interactions")
    lower = [i * features + j for i in range(features) for j in range(i)]
    pairs = g.op("Gather", [flat, g.const("lower_triangle", np.array(lower, np.int64))], name="pairs", axis=1)
    joined = g.op("Concat", [dense, pairs], name="join", axis=1)
    widths = (dim + len(lower),) + tuple(top)
    y = _mlp(g, joined, widths, last_activation="Sigmoid")
    sparse = [(f"sparse_{t}", ["N"]) for t in range(len(tables))]
    model = g.model([("dense", ["N", bottom[0]])] + sparse, [(y, ["N", top[-1]])],
                    f"DLRM ({len(tables)} embedding tables of width {dim}), random weights")
    for value in model.graph.input[1:]:
        value.type.tensor_type.elem_type = 7  # INT64 row indices
    return model


def ncf(users=1000, items=2000, gmf_dim=16, mlp_dims=(64, 32, 16), seed=0):
    """Neural Collaborative Filtering (NeuMF): inputs ``user`` and ``item`` int64 ``[N]``, output the
    interaction probability ``[N, 1]``.

    GMF tower: the elementwise product of a user and an item embedding of width ``gmf_dim``. MLP
    tower: user and item embeddings of width ``mlp_dims[0] / 2`` concatenated, through ``Gemm`` +
    ``Relu`` layers of widths ``mlp_dims``. The two towers are concatenated into a final ``Gemm`` and
    a ``Sigmoid``.
    """
    g = Graph("ncf", seed)

    def embed(ids, rows, width):
        return g.op("Gather", [g.const("table", _weight(g, rows, width, scale=0.5)), ids], name="embed", axis=0)

    gmf = g.op("Mul", [embed("user", users, gmf_dim), embed("item", items, gmf_dim)], name="gmf")
    half = mlp_dims[0] // 2
    joined = g.op("Concat", [embed("user", users, half), embed("item", items, half)], name="join", axis=1)
    tower = _mlp(g, joined, mlp_dims, last_activation="Relu")
    both = g.op("Concat", [gmf, tower], name="towers", axis=1)
    y = _mlp(g, both, (gmf_dim + mlp_dims[-1], 1), last_activation="Sigmoid")
    model = g.model([("user", ["N"]), ("item", ["N"])], [(y, ["N", 1])],
                    f"NCF / NeuMF ({users} users, {items} items), random weights")
    for value in model.graph.input:
        value.type.tensor_type.elem_type = 7  # INT64 ids
    return model
