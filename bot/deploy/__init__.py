"""After training: a trained model in other formats, checked against ours (export.py: ONNX,
TorchScript, timm), int8 through onnxruntime (quantize.py) and network slimming's channel
pruning (prune.py). Beside the training core, never importing it.
"""
