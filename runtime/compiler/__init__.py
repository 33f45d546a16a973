"""Model compiler: ONNX models to TCloud uTOp programs for the int8 pNPU."""
