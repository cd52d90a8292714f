"""Encoder side of the service: registry of named encoders, the ONNX runtime encoder,
and the build tools (fetch weights from package files, export to ONNX, quantize, evaluate).

Nothing in this package imports torch at module level: build-time code imports it lazily.
"""
