"""Export: torch -> ONNX -> TensorRT, parity checks, and the Triton model repository writer."""
