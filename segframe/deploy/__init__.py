"""Taking a trained model out: export to ONNX / TorchScript with a parity check, the exported-model
runtime, prediction on files, and the Python API (`segframe.load_model`). Imports `engine` and below."""
