"""The documented Python API from an unguarded script, from stdin and from a notebook-style
kernel: each is a real interpreter, as a user would start it (see workers_without_main)."""

import os
import subprocess
import sys

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


def test_loaders_work_from_unguarded_main(tmp_path, toy):
    """python my_script.py; python - <<EOF (__main__.__file__ is "<stdin>", which is no file); a
    kernel running a cell with %run (__main__ is replaced by a module whose __file__ is the
    script). The three interpreters run at once: each mostly imports, on one core."""
    code = SCRIPT.format(root=toy)
    script = tmp_path / "my_script.py"
    script.write_text(code)
    ways = {"script": ([sys.executable, str(script)], None),
            "stdin": ([sys.executable, "-"], code),
            "kernel": ([sys.executable, "-c", f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')"],
                       None)}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = {how: subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=ROOT, env=env, text=True) for how, (cmd, _) in ways.items()}
    for how, p in started.items():
        stdout, stderr = p.communicate(ways[how][1], timeout=300)
        assert p.returncode == 0, (how, stderr[-2000:])
        # the workers still come from the fork server (never a fork of a process running DALI threads)
        assert stdout.strip().splitlines()[-1] == "batch (32, 3, 32, 32) (32, 3, 32, 32) forkserver", how
