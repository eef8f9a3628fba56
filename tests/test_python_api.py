"""The documented Python API from an unguarded script, from stdin and from a notebook-style
kernel: each is a real interpreter, as a user would start it (see workers_without_main)."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

# The README's example, with no `if __name__ == "__main__":` guard (one worker a loader: each
# worker process imports torch, seconds apiece, and one shows what several would).
SCRIPT = """\
from bot.config import load
from bot.data import build_loaders
cfg = load("recipes/demo.yaml", ["data.root={root}", "data.backend=torch", "data.workers=1"])
train, val = build_loaders(cfg)
images, labels = next(iter(train))
images_val, _ = next(iter(val))
print("batch", tuple(images.shape), tuple(images_val.shape), train.loader.multiprocessing_context.get_start_method())
"""


@pytest.mark.parametrize("how", ["script", "stdin", "kernel"])
def test_loaders_work_from_unguarded_main(tmp_path, toy, how):
    code = SCRIPT.format(root=toy)
    script = tmp_path / "my_script.py"
    script.write_text(code)
    if how == "script":  # python my_script.py
        cmd, stdin = [sys.executable, str(script)], None
    elif how == "stdin":  # python - <<EOF (__main__.__file__ is "<stdin>", which is no file)
        cmd, stdin = [sys.executable, "-"], code
    else:  # a kernel running a cell with %run: __main__ is replaced by a module whose __file__ is the script
        cmd, stdin = [sys.executable, "-c", f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')"], None
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, input=stdin, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    # the workers still come from the fork server (never a fork of a process running DALI threads)
    assert p.stdout.strip().splitlines()[-1] == "batch (32, 3, 32, 32) (32, 3, 32, 32) forkserver"
