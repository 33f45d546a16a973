"""Two small trained classifiers of scikit-learn's bundled 8x8 digits, float and int8 ONNX.

The compiler's end-to-end check: a model whose int8 accuracy on held-out data is known, so a
compiled program can be judged by the digits it gets right, not only by matching onnxruntime.

- ``digits_mlp``: ``[N, 64]`` -> Gemm 64 -> Relu -> Gemm 32 -> Relu -> Gemm 10 (logits), trained
  by scikit-learn's ``MLPClassifier``;
- ``digits_cnn``: ``[N, 1, 8, 8]`` -> Conv 3x3 8 -> Relu -> Conv 3x3 16 stride 2 -> Relu ->
  Flatten -> Gemm 10 (logits), trained by the numpy trainer here (:func:`train_cnn`);
- each also ``_qdq`` and ``_qop``: onnxruntime's ``quantize_static`` in QDQ and QOperator format,
  int8 activations and weights, calibrated on :func:`calibration` (training samples).

Pixels are scaled to [0, 1] (the data set's 0..16 divided by 16). The files are committed under
``digits/`` beside this module; ``python -m tcloud.runtime.compiler.zoo.digits --out DIR``
regenerates them, and :data:`ACCURACY` records the held-out accuracy of each. Regeneration gives
the same bytes on the machine that made them (numpy 2, scikit-learn 1.9.1, onnxruntime 1.32.0);
other versions or BLAS builds may round differently in training, so elsewhere expect the
accuracies to agree, not necessarily the bytes.
"""

import argparse
import warnings
from pathlib import Path

import numpy as np
import onnx

from tcloud.runtime.compiler.quantize import quantize
from tcloud.runtime.compiler.zoo.builders import Graph

HERE = Path(__file__).resolve().parent / "digits"
"""Directory of the committed models and of ``digits.npz``."""
SEED = 0
HELD_OUT = 360
"""Held-out samples (20 % of the 1797, stratified by class); the other 1437 train."""
CALIBRATION = 128
"""Calibration samples: the first ones of the shuffled training split."""
NAMES = tuple(f"digits_{arch}{fmt}" for arch in ("mlp", "cnn") for fmt in ("", "_qdq", "_qop"))
ACCURACY = {
    "digits_mlp": 351 / 360,        # 0.9750
    "digits_mlp_qdq": 351 / 360,
    "digits_mlp_qop": 351 / 360,
    "digits_cnn": 350 / 360,        # 0.9722
    "digits_cnn_qdq": 349 / 360,    # 0.9694
    "digits_cnn_qop": 349 / 360,
}
"""Held-out accuracy of each committed model under onnxruntime's CPU provider (fraction of 360)."""


# ---------------------------------------------------------------- data

def split():
    """The fixed split of scikit-learn's digits: pixels 0..16 as uint8, labels 0..9.

    Returns
    -------
    tuple of numpy.ndarray
        ``(x_train [1437, 64], y_train, x_test [360, 64], y_test)``; the training samples in a
        seeded random order.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x, y = data.data.astype(np.uint8), data.target.astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=HELD_OUT,
                                                        random_state=SEED, stratify=y)
    return x_train, y_train, x_test, y_test


def _shaped(pixels, model):
    """``pixels`` (0..16, [N, 64]) as the float input of ``model`` (a name containing "mlp" or "cnn")."""
    x = pixels.astype(np.float32) / 16.0
    return x.reshape(-1, 64) if "mlp" in model else x.reshape(-1, 1, 8, 8)


def _npz():
    with np.load(HERE / "digits.npz") as data:
        return {key: data[key] for key in data.files}


def held_out(model="digits_cnn"):
    """The committed held-out split, shaped for ``model``.

    Parameters
    ----------
    model : str
        A name of :data:`NAMES` (or just ``"mlp"``/``"cnn"``): ``[N, 64]`` for the MLP,
        ``[N, 1, 8, 8]`` for the CNN.

    Returns
    -------
    x : numpy.ndarray
        float32 inputs in [0, 1].
    y : numpy.ndarray
        int64 labels 0..9.
    """
    data = _npz()
    return _shaped(data["x_test"], model), data["y_test"].astype(np.int64)


def calibration(model="digits_cnn"):
    """The committed calibration batch (training samples), float32, shaped as :func:`held_out`."""
    return _shaped(_npz()["x_calib"], model)


def load(name):
    """A committed model.

    Parameters
    ----------
    name : str
        One of :data:`NAMES`, e.g. ``"digits_cnn_qdq"``.

    Returns
    -------
    onnx.ModelProto
    """
    if name not in NAMES:
        raise KeyError(f"{name!r} is not one of {NAMES}")
    return onnx.load(HERE / f"{name}.onnx")


def accuracy(model, x, y):
    """Fraction of ``x`` whose argmax output under onnxruntime (CPU) is ``y``.

    Parameters
    ----------
    model : onnx.ModelProto
    x, y : numpy.ndarray
        Inputs (batch first) and labels.

    Returns
    -------
    float
    """
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.mean(logits.argmax(axis=1) == y))


# ---------------------------------------------------------------- the MLP

def train_mlp(x, y):
    """An MLP 64 -> 64 -> 32 -> 10 (Relu) trained by scikit-learn's ``MLPClassifier`` (Adam).

    Parameters
    ----------
    x : numpy.ndarray
        float [N, 64] in [0, 1].
    y : numpy.ndarray
        Labels.

    Returns
    -------
    list of (numpy.ndarray, numpy.ndarray)
        ``(weight [out, in], bias)`` of each layer.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mlp = MLPClassifier(hidden_layer_sizes=(64, 32), activation="relu", solver="adam",
                        alpha=1e-4, batch_size=32, learning_rate_init=1e-3, max_iter=200,
                        n_iter_no_change=200, random_state=SEED)
    with warnings.catch_warnings():   # a fixed 200 epochs, on purpose: no convergence test
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(x, y)
    return [(w.T, b) for w, b in zip(mlp.coefs_, mlp.intercepts_)]


def mlp_onnx(layers):
    """The float ONNX model of :func:`train_mlp`'s layers: ``input`` [N, 64] -> ``output`` [N, 10]."""
    g = Graph("digits_mlp")
    x = "input"
    for i, (w, b) in enumerate(layers):
        x = g.gemm(x, w, b)
        if i < len(layers) - 1:
            x = g.op("Relu", [x])
    return g.model([("input", ["N", 64])], [(x, ["N", 10])], "digits MLP, logits")


# ---------------------------------------------------------------- the CNN

CNN_LAYERS = ((1, 8, 1), (8, 16, 2))
"""(in channels, out channels, stride) of the CNN's two 3x3 convolutions (padding 1)."""


def im2col(x, stride):
    """Patches of a 3x3 convolution with padding 1: ``[N, C, H, W]`` -> ``[N, Ho, Wo, C * 9]``.

    The last axis runs over (channel, kernel row, kernel column), as ``weight.reshape(out, -1)``.
    """
    n, c, h, w = x.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, c, 3, 3, ho, wo), x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, i, j] = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n, ho, wo, c * 9)


def col2im(dcols, shape, stride):
    """The adjoint of :func:`im2col`: patch gradients summed back into ``[N, C, H, W]``."""
    n, c, h, w = shape
    ho, wo = dcols.shape[1:3]
    d = dcols.reshape(n, ho, wo, c, 3, 3).transpose(0, 3, 4, 5, 1, 2)
    dxp = np.zeros((n, c, h + 2, w + 2), dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += d[:, :, i, j]
    return dxp[:, :, 1:-1, 1:-1]


def _cnn_forward(params, x):
    """Logits and the activations the backward pass needs."""
    cache = []
    for (w, b), (_, _, stride) in zip(params[:-1], CNN_LAYERS):
        cols = im2col(x, stride)
        out = np.maximum(cols @ w.reshape(len(w), -1).T + b, 0.0)
        cache.append((x.shape, cols, out))
        x = out.transpose(0, 3, 1, 2)                       # NHWC -> NCHW
    flat = x.reshape(len(x), -1)                            # ONNX Flatten of NCHW
    w, b = params[-1]
    return flat @ w.T + b, cache, flat


def _cnn_gradients(params, x, y):
    """Mean softmax cross-entropy of a batch and its gradient for every parameter."""
    logits, cache, flat = _cnn_forward(params, x)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))
    dlogits = p
    dlogits[np.arange(len(y)), y] -= 1.0
    dlogits /= len(y)
    w, _ = params[-1]
    grads = [(dlogits.T @ flat, dlogits.sum(axis=0))]
    dx = (dlogits @ w).reshape(cache[-1][2].transpose(0, 3, 1, 2).shape)
    for (w, _), (shape, cols, out), (_, _, stride) in zip(params[-2::-1], cache[::-1],
                                                           CNN_LAYERS[::-1]):
        dout = dx.transpose(0, 2, 3, 1) * (out > 0)         # NCHW -> NHWC, through Relu
        dmat = dout.reshape(-1, dout.shape[-1])
        grads.insert(0, ((dmat.T @ cols.reshape(len(dmat), -1)).reshape(w.shape), dmat.sum(axis=0)))
        dx = col2im(dout @ w.reshape(len(w), -1), shape, stride)
    return loss, grads


def train_cnn(x, y, epochs=30, batch=32, lr=3e-3):
    """Train the digits CNN with Adam on softmax cross-entropy (numpy, float64, seeded).

    Parameters
    ----------
    x : numpy.ndarray
        float [N, 1, 8, 8] in [0, 1].
    y : numpy.ndarray
        Labels.
    epochs, batch : int
        Passes over ``x`` (shuffled each time) and minibatch size.
    lr : float
        Adam step size (betas 0.9, 0.999).

    Returns
    -------
    list of (numpy.ndarray, numpy.ndarray)
        ``(weight, bias)`` of conv1 [8, 1, 3, 3], conv2 [16, 8, 3, 3] and the Gemm [10, 256].
    """
    rng = np.random.default_rng(SEED)
    shapes = [(cout, cin, 3, 3) for cin, cout, _ in CNN_LAYERS] + [(10, CNN_LAYERS[-1][1] * 16)]
    params = [(rng.normal(0.0, np.sqrt(2.0 / np.prod(s[1:])), s), np.zeros(s[0])) for s in shapes]
    flat = [a for pair in params for a in pair]
    m = [np.zeros_like(a) for a in flat]
    v = [np.zeros_like(a) for a in flat]
    x, y, step = x.astype(np.float64), y.astype(np.int64), 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            _, grads = _cnn_gradients(params, x[idx], y[idx])
            step += 1
            for a, g, mi, vi in zip(flat, [g for pair in grads for g in pair], m, v):
                mi *= 0.9
                mi += 0.1 * g
                vi *= 0.999
                vi += 0.001 * g * g
                a -= lr * (mi / (1 - 0.9 ** step)) / (np.sqrt(vi / (1 - 0.999 ** step)) + 1e-8)
    return params


def cnn_onnx(params):
    """The float ONNX model of :func:`train_cnn`'s parameters: ``input`` [N, 1, 8, 8] -> [N, 10]."""
    g = Graph("digits_cnn")
    x = "input"
    for (w, b), (_, _, stride) in zip(params[:-1], CNN_LAYERS):
        x = g.op("Relu", [g.conv(x, w, b, stride)])
    x = g.op("Flatten", [x], axis=1)
    x = g.gemm(x, *params[-1])
    return g.model([("input", ["N", 1, 8, 8])], [(x, ["N", 10])], "digits CNN, logits")


# ---------------------------------------------------------------- regeneration

def build(out):
    """Train both models, quantize them, write the six ``.onnx`` files and ``digits.npz``.

    Parameters
    ----------
    out : str or pathlib.Path
        Directory to write (created if needed).

    Returns
    -------
    dict
        Held-out accuracy of each of :data:`NAMES`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = split()
    np.savez_compressed(out / "digits.npz", x_test=x_test, y_test=y_test,
                        x_calib=x_train[:CALIBRATION])
    floats = {"digits_mlp": mlp_onnx(train_mlp(_shaped(x_train, "mlp"), y_train)),
              "digits_cnn": cnn_onnx(train_cnn(_shaped(x_train, "cnn"), y_train))}
    result = {}
    for name, model in floats.items():
        models = {name: model}
        for fmt in ("qdq", "qop"):
            models[f"{name}_{fmt}"] = quantize(model, fmt, _shaped(x_train[:CALIBRATION], name))
        for full, m in models.items():
            onnx.save(m, out / f"{full}.onnx")
            result[full] = accuracy(m, _shaped(x_test, full), y_test.astype(np.int64))
    return result


def main(argv=None):
    """``python -m tcloud.runtime.compiler.zoo.digits --out DIR``: regenerate and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE), help=f"output directory (default: {HERE})")
    args = parser.parse_args(argv)
    result = build(args.out)
    for name in NAMES:
        size = (Path(args.out) / f"{name}.onnx").stat().st_size
        print(f"{name:16s} held-out accuracy {result[name]:.4f}  ({size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
