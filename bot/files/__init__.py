"""Model files: checkpoints written atomically and read back (checkpoint.py), a trained model
read from a run folder, a checkpoint or an int8 ONNX file and rebuilt (trained.py), and the
ONNX reader that runs such a file like a torch module (onnx_model.py).

Below the training core and the after-training tools, which both read models back; above
the networks, which it builds.
"""
