"""The model zoo the compiler is tested on.

- :mod:`tcloud.runtime.compiler.zoo.digits`: an MLP and a small CNN trained on scikit-learn's
  bundled 8x8 digits, committed as float, QDQ and QOperator int8 ONNX files with their held-out
  split (:func:`~tcloud.runtime.compiler.zoo.digits.load`,
  :func:`~tcloud.runtime.compiler.zoo.digits.held_out`);
- :mod:`tcloud.runtime.compiler.zoo.builders`: ResNet-50, MobileNetV2 and a DLRM MLP tower (whole
  or one block) with seeded random weights, and :func:`~tcloud.runtime.compiler.quantize.quantize`.
"""
