"""A compiled model: the program image plus what the host does at its edges.

The pNPU computes on int8; the float world stays on the host, exactly as onnxruntime computes it:
``QuantizeLinear`` (``saturate(round_half_even(x / scale) + zero_point)`` with a float32 division)
before the run, ``DequantizeLinear`` (``float32(q − zero_point) · scale``) after it, and the layout
change between NCHW and the pNPU's NHWC.
"""

import json

import numpy as np

from tcloud.isa import ProgramImage, get_config
from tcloud.isa.errors import ImageError
from tcloud.isa.table import UINT8_OFFSET

from ..api import InputError
from ..backends import make_device
from ..execute import run_image
from ..files import read_bytes, write_file
from .lower import METADATA_FORMAT

_DTYPES = {"int8": np.int8, "uint8": np.uint8}


def quantize(x, scale, zero_point, dtype):
    """onnxruntime's ``QuantizeLinear`` of a float32 array."""
    info = np.iinfo(_DTYPES[dtype])
    q = np.rint(np.asarray(x, np.float32) / np.float32(scale)) + np.float32(zero_point)
    return np.clip(q, info.min, info.max).astype(_DTYPES[dtype])


def dequantize(q, scale, zero_point):
    """onnxruntime's ``DequantizeLinear``: ``float32(q − zero_point) · scale``."""
    return (q.astype(np.int32) - np.int32(zero_point)).astype(np.float32) * np.float32(scale)


def to_device(q, tensor):
    """The rows the pNPU holds for the logical int8/uint8 tensor ``q`` (NCHW, ``[N, F]`` or ``[N, S, F]``)."""
    layout, offset = tensor["layout"], UINT8_OFFSET if tensor["dtype"] == "uint8" else 0
    values = (q.astype(np.int16) - offset).astype(np.int8)
    zero = np.int8(tensor["zero_point"] - offset)
    if layout["kind"] == "nhwc":
        batch, height, width, channels = layout["shape"]
        top, left, bottom, right = layout["border"]
        rows = np.full((batch, height + top + bottom, width + left + right, channels), zero, np.int8)
        rows[:, top:top + height, left:left + width, :q.shape[1]] = values.transpose(0, 2, 3, 1)
        return rows.reshape(-1, channels)
    rows = np.zeros(layout["shape"], np.int8)
    columns = layout["feature_map"] if layout["feature_map"] is not None else np.arange(q.shape[-1])
    rows[:, columns] = values.reshape(-1, q.shape[-1])
    return rows


def from_device(rows, tensor):
    """Inverse of :func:`to_device`: the logical tensor in its own dtype."""
    layout, offset = tensor["layout"], UINT8_OFFSET if tensor["dtype"] == "uint8" else 0
    shape = tensor["shape"]
    if layout["kind"] == "nhwc":
        batch, height, width, channels = layout["shape"]
        top, left, bottom, right = layout["border"]
        pixels = rows.reshape(batch, height + top + bottom, width + left + right, channels)
        values = pixels[:, top:top + height, left:left + width, :shape[1]].transpose(0, 3, 1, 2)
    else:
        columns = layout["feature_map"] if layout["feature_map"] is not None else np.arange(shape[-1])
        values = rows[:, columns].reshape(shape)
    return (values.astype(np.int16) + offset).astype(_DTYPES[tensor["dtype"]])


class CompiledModel:
    """An ONNX model compiled for one configuration and batch size.

    Build it with :func:`tcloud.runtime.compile`, or load a saved one with :meth:`load`.

    Attributes
    ----------
    image : ProgramImage
    config : ArchConfig
    batch : int
    inputs, outputs : list of dict
        Name, shape, quantization and HBM layout of each model input and output.
    layers : list of dict
        Per compiled operator: name, op type, output shape, GEMM ``(m, k, n)``, MACs, vector
        elements, uTOps per engine class, its code range in HBM and its scratchpad footprint.
    """

    def __init__(self, image, recompile=None):
        try:
            metadata = json.loads(image.metadata) if image.metadata else {}
        except json.JSONDecodeError:
            metadata = {}
        if metadata.get("format") != METADATA_FORMAT:
            raise ImageError(f"the image for {image.config_name!r} is not a compiled model (no "
                             f"{METADATA_FORMAT} metadata); run it with `tcloud run` as a program")
        self.image = image
        self.config = get_config(image.config_name)
        self.batch = metadata["batch"]
        self.inputs, self.outputs, self.layers = metadata["inputs"], metadata["outputs"], metadata["layers"]
        self._recompile = recompile
        self._batches = {self.batch: self}

    def __repr__(self):
        return (f"CompiledModel(config={self.config.name!r}, batch={self.batch}, layers={len(self.layers)}, "
                f"hbm={self.image.hbm_bytes} B, sram={self.image.sram_bytes} B)")

    @classmethod
    def load(cls, path):
        """Load a model saved with :meth:`save` (or written by ``tcloud compile``)."""
        return cls(ProgramImage.from_bytes(read_bytes(path)))

    def save(self, path):
        """Write the image (with its metadata) to ``path`` atomically."""
        return write_file(path, self.image.to_bytes(), "compiled model")

    def for_batch(self, batch):
        """This model compiled for ``batch`` samples (compiled once per batch size and cached).

        Raises
        ------
        InputError
            For a loaded model (no source to recompile) and a batch it was not compiled for.
        """
        if batch not in self._batches:
            if self._recompile is None:
                raise InputError(f"this model was compiled for batch {self.batch}, not {batch}; compile it "
                                 f"again with batch={batch}")
            compiled = self._recompile(batch)
            compiled._batches = self._batches
            self._batches[batch] = compiled
        return self._batches[batch]

    def device_inputs(self, inputs):
        """The image's input symbols for a dict of float arrays (quantized and laid out)."""
        if not isinstance(inputs, dict):
            raise InputError(f"inputs must be a dict of input name to array, got {type(inputs).__name__}")
        names = {spec["name"] for spec in self.inputs}
        unknown, missing = sorted(set(inputs) - names), sorted(names - set(inputs))
        if unknown or missing:
            raise InputError(f"the model's inputs are {sorted(names)}; " +
                             "; ".join(p for p in (f"unknown {unknown}" if unknown else "",
                                                   f"missing {missing}" if missing else "") if p))
        rows = {}
        for spec in self.inputs:
            x = np.asarray(inputs[spec["name"]])
            if x.dtype.kind not in ("iu" if spec.get("ids") else "fiu"):
                raise InputError(f"input {spec['name']!r} must be {'integer ids' if spec.get('ids') else 'numeric'}, "
                                 f"got dtype {x.dtype}")
            if x.shape != tuple(spec["shape"]):
                raise InputError(f"input {spec['name']!r} must have shape {tuple(spec['shape'])}, got {x.shape}")
            if spec.get("ids"):
                bad = (x < 0) | (x >= spec["bound"])
                if bad.any():
                    raise InputError(f"input {spec['name']!r}: id {int(x[bad][0])} is outside 0 .. {spec['bound'] - 1} "
                                     f"(the rows of the smallest table it indexes)")
                rows[spec["name"]] = x.astype(np.int32).reshape(-1)
            else:
                rows[spec["name"]] = to_device(quantize(x, spec["scale"], spec["zero_point"], spec["dtype"]), spec)
        return rows

    def random_inputs(self, seed=0):
        """Seeded inputs for every model input: standard-normal float32, or ids uniform over the rows
        their tables have."""
        rng = np.random.default_rng(seed)
        return {spec["name"]: rng.integers(0, spec["bound"], spec["shape"]) if spec.get("ids") else
                rng.standard_normal(spec["shape"]).astype(np.float32) for spec in self.inputs}

    def host_outputs(self, rows):
        """The model's outputs (float32 after ``DequantizeLinear``, else int8/uint8) from the image's."""
        outputs = {}
        for spec in self.outputs:
            q = from_device(np.asarray(rows[spec["name"]]), spec)
            outputs[spec["name"]] = dequantize(q, spec["scale"], spec["zero_point"]) if spec["dequantize"] else q
        return outputs

    def run(self, inputs, backend="functional", vnpu=None, **hbm_timing):
        """Run the model on ``inputs`` and return its outputs as onnxruntime would.

        Parameters
        ----------
        inputs : dict
            Input name → float array of the model's input shape (any batch size: see
            :meth:`for_batch`).
        backend : str
            ``functional``, ``amaranth`` or ``verilator`` (ignored with ``vnpu``).
        vnpu : VNPU, optional
            Run on this vNPU (the model is loaded into it if it holds another program).
        **hbm_timing
            HBM model options of the RTL backends.

        Returns
        -------
        dict
            Output name → array (float32, or int8/uint8 for outputs the model leaves quantized).

        Raises
        ------
        InputError
            Missing, unknown or mis-shaped inputs.
        DeviceFault
            If the program faulted.
        """
        batch = self._batch_of(inputs)
        model = self if batch == self.batch else self.for_batch(batch)
        rows = model.device_inputs(inputs)
        if vnpu is not None:
            if vnpu.image is not model.image:
                vnpu.load(model.image)
            return model.host_outputs(vnpu.run(rows))
        device = make_device(backend, model.config, **hbm_timing)
        try:
            outputs, _ = run_image(device, model.image, rows)
        finally:
            close = getattr(device, "close", None)
            if close is not None:
                close()
        return model.host_outputs(outputs)

    def _batch_of(self, inputs):
        if isinstance(inputs, dict) and inputs:
            first = np.asarray(next(iter(inputs.values())))
            if first.ndim >= 1:
                return first.shape[0]
        return self.batch
