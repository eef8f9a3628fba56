"""Model files: checkpoints written atomically and read back (checkpoint.py), a trained model
read from a run folder, a checkpoint or an ONNX file and rebuilt (trained.py), the ONNX
metadata and reader that runs such a file like a torch module (onnx_model.py), the run's eval
preprocessing in other tools' words (preprocessing.py), and where the after-training commands
may write a file (outputs.py) or a folder (output_folder.py).

Below the training core and the after-training tools, which both read models back; above
the networks, which it builds.
"""
