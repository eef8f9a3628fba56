"""make rehearse, small: scripts/rehearse.py at 1/250 of ImageNet's counts, 2 processes reading their
own batches (no loader workers: 4 fewer interpreters a launch), in 100 train shards (more than a
process keeps open). Every check of its table must pass: a run on 10 classes without class
names, shards held open per process, SIGTERM and resume bit for bit, samples per epoch, summary
top-1 against evaluate.py. The epoch phase (a fourth launch) and
DALI are left out for the suite's time: an epoch's end under torchrun is tests/test_preempt.py's,
DALI's the loader tests'."""

import subprocess
import sys

from conftest import ROOT

CHECKS = ("10 classes without class names", "SIGTERM mid-epoch", "resumed = uninterrupted: weights",
          "resumed = uninterrupted: metrics.jsonl", "samples used in epoch 2",
          "summary top-1 and val loss = evaluate.py", "peak per trainer (torch")


def test_a_small_rehearsal_passes_every_check(tmp_path):
    done = subprocess.run([sys.executable, "scripts/rehearse.py", "--out", str(tmp_path), "--scale", "0.004",
                           "--processes", "2", "--train-shards", "100", "--val-shards", "4", "--batch", "256",
                           "--workers", "0", "--skip", "epoch", "dali"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][2:]
    failed = [row for row in rows if row.endswith("| **NO** |")]
    assert done.returncode == 0 and not failed, (failed or done.stdout[-3000:], done.stderr[-3000:])
    for check in CHECKS:
        assert any(row.startswith(f"| {check}") and row.endswith("| yes |") for row in rows), check
    assert not (tmp_path / "runs").exists()  # the runs go, the shard sets stay for the next rehearsal
    assert (tmp_path / "imagenet-wds/_info.json").is_file()
