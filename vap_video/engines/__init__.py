"""vap model side: detector, training, evaluation, export, inference backends.

Importing this package must not require torch or TensorRT: the runtime uses it on machines that
have neither (ONNX Runtime on CPU).
"""
