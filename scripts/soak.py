"""Kill a toy run with SIGKILL K times at random steps, resume it each time, and check that its
final weights equal an uninterrupted run's, bit for bit.

    python scripts/soak.py --kills 5 [--data data/toy] [--out runs/soak] [--seed 0]

Both runs are `python train.py recipes/demo.yaml ...` at 32 px on the CPU, with last.pt written
every 2 steps; a kill lands anywhere (mid-step, mid-write of last.pt, mid-evaluation).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["data.image_size=32", "data.batch_size=16", "data.workers=0", "schedule.epochs=4",
        "schedule.warmup_epochs=1", "run.log_every=1", "run.checkpoint_every=2"]


def command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "train.py", "recipes/demo.yaml", f"data.root={data}", f"run.out={out}", *ARGS]


def logged_step(out: Path, skip: int = 0) -> int:
    """The last training step in metrics.jsonl after its first `skip` lines (those of earlier attempts)."""
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines()[skip:] if path.exists() else []
    return max((json.loads(l)["step"] for l in lines if l.endswith("}") and '"loss"' in l), default=0)


def line_count(out: Path) -> int:
    return len((out / "metrics.jsonl").read_text().splitlines()) if (out / "metrics.jsonl").exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--data", type=Path, default=ROOT / "runs/soak/toy")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/soak")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    if not (args.data / "train").is_dir():
        subprocess.run([sys.executable, "scripts/make_toy_data.py", str(args.data), "--classes", "4", "--train", "24",
                        "--val", "8", "--size", "64"], cwd=ROOT, check=True, capture_output=True)
    whole, killed = args.out / "whole", args.out / "killed"
    for folder in (whole, killed):
        shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(command(args.data, whole), cwd=ROOT, check=True, capture_output=True)
    total = json.loads((whole / "summary.json").read_text())["steps"]
    print(f"uninterrupted: {total} steps in {time.perf_counter() - start:.0f} s")

    targets = sorted(rng.sample(range(1, total), min(args.kills, total - 1)))
    for target in targets:
        skip = line_count(killed)
        victim = subprocess.Popen(command(args.data, killed), cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        while logged_step(killed, skip) < target and victim.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # anywhere inside the next step, or the checkpoint write
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        saved = [torch.load(killed / n, weights_only=False)["step"] for n in ("last.pt",) if (killed / n).exists()]
        print(f"killed after step {logged_step(killed, skip)}; last.pt at step {saved[0] if saved else None}")
    done = subprocess.run(command(args.data, killed), cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr)
        return 1
    a = torch.load(whole / "last.pt", weights_only=False)["model"]
    b = torch.load(killed / "last.pt", weights_only=False)["model"]
    different = [k for k in a if not torch.equal(a[k], b[k])]
    print(f"{len(targets)} kills, then resumed to step {total}: final weights "
          + ("identical (bit-exact, all %d tensors)" % len(a) if not different else f"DIFFER in {different[:5]}"))
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
