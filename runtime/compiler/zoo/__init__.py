"""The model zoo the compiler is tested on.

- :mod:`tcloud.runtime.compiler.zoo.digits`: an MLP and a small CNN trained on scikit-learn's
  bundled 8x8 digits, committed as float, QDQ and QOperator int8 ONNX files with their held-out
  split (:func:`~tcloud.runtime.compiler.zoo.digits.load`,
  :func:`~tcloud.runtime.compiler.zoo.digits.held_out`);
- :mod:`tcloud.runtime.compiler.zoo.builders`: ResNet-50, MobileNetV2 and a DLRM MLP tower (whole
  or one block) with seeded random weights, and :func:`~tcloud.runtime.compiler.quantize.quantize`;
- :mod:`tcloud.runtime.compiler.zoo.transformers`: a BERT-style encoder, a Transformer decoder
  block, DLRM with embeddings and NCF.

:data:`BUILDERS` names every builder for ``tcloud zoo``; :func:`build` makes one from text options.
"""

import inspect

from . import builders, transformers

BUILDERS = {
    "resnet50": builders.resnet50, "resnet50_block": builders.resnet50_block,
    "mobilenetv2": builders.mobilenetv2, "mobilenetv2_block": builders.mobilenetv2_block,
    "dlrm_mlp": builders.dlrm_mlp, "bert_encoder": transformers.bert_encoder,
    "decoder_block": transformers.decoder_block, "dlrm": transformers.dlrm, "ncf": transformers.ncf,
}
"""Builder name → function (seeded random weights, float ONNX)."""

_SHAPES = {"tiny": transformers.BERT_TINY, "base": transformers.BERT_BASE}


def options(name):
    """The keyword options of builder ``name`` with their defaults (``shape`` as ``"tiny"``/``"base"``)."""
    found = {}
    for parameter in inspect.signature(BUILDERS[name]).parameters.values():
        default = parameter.default
        found[parameter.name] = next((k for k, v in _SHAPES.items() if v == default), default)
    return found


def build(name, settings=()):
    """The float model of builder ``name`` with options given as ``"key=value"`` text.

    Integers, comma-separated integer tuples, and ``shape=tiny|base`` (BERT) are understood.

    Raises
    ------
    ValueError
        An unknown builder or option, or a value of the wrong kind (the message names it).
    """
    if name not in BUILDERS:
        raise ValueError(f"no model {name!r} in the zoo; choose one of {', '.join(BUILDERS)}")
    known, kwargs = options(name), {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or key not in known:
            raise ValueError(f"{setting!r}: {name} takes {', '.join(f'{k}=' for k in known)}")
        default = known[key]
        try:
            if key == "shape":
                kwargs[key] = _SHAPES[text]
            elif isinstance(default, tuple):
                kwargs[key] = tuple(int(v) for v in text.split(","))
            else:
                kwargs[key] = int(text)
        except (KeyError, ValueError):
            expected = "tiny or base" if key == "shape" else ("integers, comma-separated" if isinstance(default, tuple)
                                                              else "an integer")
            raise ValueError(f"{setting!r}: {key} must be {expected}") from None
    return BUILDERS[name](**kwargs)
