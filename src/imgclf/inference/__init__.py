"""Inference: Predictor (torch or ONNX Runtime), ONNX export, the FastAPI server and its web page."""
