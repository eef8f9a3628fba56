"""After training: a trained model in other formats, checked against ours (export.py: ONNX,
TorchScript, timm; hub.py: the folder timm's `local-dir:` and the Hugging Face Hub load, with
its model card from model_card.py), int8 through onnxruntime (quantize.py) and network
slimming's channel pruning (prune.py). Beside the training core, never importing it.
"""
