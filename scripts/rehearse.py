"""An ImageNet-sized job rehearsed on one machine, for the bugs that only scale shows (make rehearse).

    python scripts/rehearse.py                        # ImageNet's counts, 8 processes: data/rehearse
    python scripts/rehearse.py --processes 4          # fewer processes where 8 do not fit in memory
    python scripts/rehearse.py --scale 0.01 --batch 256   # a hundredth of the counts
    python scripts/rehearse.py --repo ../other-checkout   # that checkout's commands on the same data

The data: a shard set in timm's layout with ImageNet's counts (1,281,167 train samples in
1,024 shards, 50,000 val in 64, 1,000 classes), as the hub's copy comes: no class names, no
index files. Each sample is a 20x20 JPEG from a pool of four per class, the bytes reused. It is
written once into OUT/imagenet-wds and reused while complete (its _rehearse.json says so).

The project's own commands then run on it, each under `ulimit -n 1024` (--nofile) with
OMP_NUM_THREADS=1, shrunk only where compute must be (ResNet-18-D at 1/16 width, 20 px with CIFAR's padded crop, colour
jitter and PCA lighting off, a global batch of 4,096): make_shards.py --index; a 10-class set
without class names; train.py under torchrun (N CPU processes, gloo, a loader worker each) to
step 10, and the same command stopped by SIGTERM mid-epoch then run again, compared bit for bit;
the first run continued past its epoch's end; evaluate.py on its best.pt; a few steps and an
evaluation on DALI. Every process of each launch is looked at every second (descriptors, RSS;
PSS and USS every fifth time) and sorted by role. One table of checks ends the output; exit
status 1 when a check fails: a phase that crashes is a failed check with its one-line reason,
and the rest still runs. docs/distributed.md ("Rehearsal") says what each check guards against.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from rehearse_launch import Launcher, last_step, reason, records  # its modules, beside it
from rehearse_shards import SIDE, VARIANTS, refusal, say, write_set
from rehearse_watch import merge

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = {"train": 1_281_167, "val": 50_000, "train_shards": 1024, "val_shards": 64, "classes": 1000}
RECIPE = "recipes/demo.yaml"
# Where it shrank: the network, the image and the augmentation's CPU. The crop is CIFAR's padded
# one at the JPEG's own 20 px (2.4x the torch loader's samples a second of a random-resized crop
# to 16 px, which runs into the minutes over an epoch of 1.28 M samples); jitter and lighting off.
MODEL = ["model.arch=resnet18", "model.variant=D", "model.width=0.0625", "data.brightness=0", "data.contrast=0",
         "data.saturation=0", "data.pca_lighting=0", "optim.lr=0.1", "schedule.epochs=2",
         "schedule.warmup_epochs=0", "run.log_every=1"]
CROPS = {"padded": [f"data.image_size={SIDE}", "data.crop=padded", "data.padding=2"],
         "resized": ["data.image_size=16"]}  # the latter for a checkout older than data.crop
TEN = {"train": 300, "val": 100, "train_shards": 3, "val_shards": 1, "classes": 10, "side": SIDE, "variants": VARIANTS}
STOPPED = re.compile(r"stopped by SIGTERM at step (\d+)")


# ---------------------------------------------------------------- the table


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, check: str, value: str, expected: str, ok: bool | None) -> None:
        self.rows.append((check, value, expected, "-" if ok is None else ("yes" if ok else "**NO**")))

    @property
    def failed(self) -> list[str]:
        return [r[0] for r in self.rows if r[3] == "**NO**"]

    def markdown(self) -> str:
        lines = ["| check | value | expected | ok |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in self.rows]
        return "\n".join(lines)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def same_weights(a: Path, b: Path) -> tuple[int, int]:
    """(tensors that differ, tensors) between two checkpoints' weights."""
    import torch

    x, y = (torch.load(p, weights_only=False, map_location="cpu")["model"] for p in (a, b))
    if x.keys() != y.keys():
        return len(x.keys() ^ y.keys()), len(x)
    return sum(not torch.equal(x[k], y[k]) for k in x), len(x)


def evaluate_top1(csv_text: str) -> tuple[float, int]:
    """(top-1 in %, images) from evaluate.py's per-class CSV: each class's hits are exact there
    (top-1 of at most a few dozen images, to 2 decimals), the table's 2 decimals are not."""
    hits = images = 0
    for row in csv.DictReader(io.StringIO(csv_text)):
        n = int(row["images"])
        column = next(k for k in row if k.startswith("top1_"))
        hits += round(n * float(row[column]) / 100) if n else 0
        images += n
    return 100 * hits / max(images, 1), images


# ---------------------------------------------------------------- the rehearsal


def plan_of(a) -> dict:
    """The shard set's counts: ImageNet's times --scale, unless the shard counts are given."""
    return {"train": round(IMAGENET["train"] * a.scale), "val": round(IMAGENET["val"] * a.scale),
            "train_shards": a.train_shards or max(1, round(IMAGENET["train_shards"] * a.scale)),
            "val_shards": a.val_shards or max(1, round(IMAGENET["val_shards"] * a.scale)),
            "classes": IMAGENET["classes"], "side": SIDE, "variants": VARIANTS}


class Rehearsal:
    """The phases in order, each adding its rows to the table; `run` returns the exit status."""

    def __init__(self, a):
        self.a, self.clock, self.began = a, time.monotonic(), os.getloadavg()[0]
        sys.path.insert(0, str(a.repo))  # the checkout under test's bot, for what is computed here
        from bot.data import sampling

        self.plan = plan_of(a)
        self.n, self.batch, self.world = self.plan["train"], a.batch, a.processes
        self.steps = sampling.steps_per_epoch(self.n, 1, self.batch)
        self.prefix, self.end = a.prefix, self.steps + a.past
        self.data, self.runs = a.out / "imagenet-wds", a.out / "runs"
        self.whole, self.stopped = self.runs / "torch", self.runs / "torch-stopped"
        self.table, self.launcher = Table(), Launcher(a, self.clock)
        self.model = MODEL + CROPS[a.crop]
        self.peaks = {"torch": {}, "dali": {}}
        self.total_pss = {"torch": 0, "dali": 0}
        self.least_available = psutil.virtual_memory().available

    def run(self) -> int:
        a, p = self.a, self.plan
        print(f"rehearse {a.repo}: {self.n:,} train samples in {p['train_shards']:,} shards, {p['val']:,} val in "
              f"{p['val_shards']}, {p['classes']:,} classes; {self.world} processes x {a.workers} loader worker(s), "
              f"global batch {self.batch:,} ({self.steps:,} steps an epoch), ulimit -n {a.nofile}; "
              f"load average {self.began:.1f}", flush=True)
        shutil.rmtree(self.runs, ignore_errors=True)  # an earlier rehearsal's runs would be resumed
        try:
            for phase in (self.shard_set, self.open_data, self.index, self.ten_classes, self.resume, self.epoch,
                          self.samples_per_epoch, self.top1, self.dali, self.resources):
                if phase.__name__ in a.skip:
                    self.table.add(phase.__name__.replace("_", " "), f"not run (--skip {phase.__name__})", "", None)
                    continue
                try:
                    phase()
                except Exception as e:  # the rest still runs: each phase reads what it needs from disk
                    self.table.add(phase.__name__.replace("_", " "), f"failed: {type(e).__name__}: {e}"[:200], "",
                                   False)
        finally:
            if not a.keep:
                shutil.rmtree(self.runs, ignore_errors=True)
        wall, ended = time.monotonic() - self.clock, os.getloadavg()[0]
        self.table.add("wall time", f"{wall / 60:.1f} min on {os.cpu_count()} cores (load average {self.began:.1f} "
                       f"before, {ended:.1f} after)", "(measured)", None)
        print()
        print(self.table.markdown())
        failed = self.table.failed
        if failed:
            print(f"\n{len(failed)} check(s) failed: {'; '.join(failed)}", flush=True)
        return 1 if failed else 0

    def say(self, text: str) -> None:
        say(self.clock, text)

    def watched(self, kind: str, result: dict) -> dict:
        """`result` of a launch, its peaks added to those of `kind` (torch, dali)."""
        merge(self.peaks[kind], result["peaks"])
        self.least_available = min(self.least_available, result["least_available"])
        self.total_pss[kind] = max(self.total_pss[kind], result["peak_total_pss"])
        return result

    def train_cmd(self, out: Path, *extra: str, backend: str = "torch") -> list[str]:
        return self.launcher.torchrun("train.py", RECIPE, f"data.root={self.data}", f"run.out={out}", *self.model,
                                      f"data.batch_size={self.batch}", f"data.workers={self.a.workers}",
                                      f"data.backend={backend}", *extra)

    # -- the shard set, as the hub's copy comes
    def shard_set(self) -> None:
        from timm.data import ImageNetInfo

        p, t = self.plan, time.monotonic()
        self.wnids = list(ImageNetInfo().label_names())
        # the hub's set names no class: it is known by ImageNet's count, so another count names them
        how = write_set(self.data, p, None if self.n == IMAGENET["train"] else self.wnids, self.clock)
        self.say(f"shards: {self.data} {how} ({time.monotonic() - t:.0f} s)")
        self.info = json.loads((self.data / "_info.json").read_text())
        counts = [(s["num_samples"], len(s["filenames"])) for s in self.info["splits"].values()]
        names = "classes.txt" if (self.data / "classes.txt").exists() else "no class names"
        self.table.add("shard set (timm's layout, the hub's form)",
                       f"train {counts[0][0]:,} in {counts[0][1]:,} shards, val {counts[1][0]:,} in {counts[1][1]}, "
                       f"{names}, no index files; {how}",
                       f"{p['train']:,} in {p['train_shards']:,}, {p['val']:,} in {p['val_shards']}",
                       counts == [(p["train"], p["train_shards"]), (p["val"], p["val_shards"])])

    # -- opening it reads _info.json alone
    def open_data(self) -> None:
        from bot.data import open_dataset

        t = time.monotonic()
        train, _ = open_dataset(str(self.data))
        took = time.monotonic() - t
        self.table.add("time to open the data (open_dataset)", f"{took:.3f} s, {len(train.classes):,} classes",
                       "under 1 s; ImageNet's 1,000 wnids", took < 1 and train.classes == self.wnids)

    # -- index files, by the real command (DALI's reader needs them)
    def index(self) -> None:
        from bot.data import shards

        t = time.monotonic()
        done = subprocess.run([sys.executable, "scripts/make_shards.py", "--index", str(self.data)], cwd=self.a.repo,
                              capture_output=True, text=True, env=self.launcher.env)
        took = time.monotonic() - t
        said = (done.stdout.strip() if done.returncode == 0 else reason(done.stderr)).replace(f" in {self.data}", "")
        self.say(f"index: {said} ({took:.0f} s)")
        tars = [self.data / f for s in self.info["splits"].values() for f in s["filenames"]]
        present = sum(shards.index_path(tar).is_file() for tar in tars)
        self.table.add("index files (make_shards.py --index)", f"{present:,} of {len(tars):,}; {said} in {took:.0f} s",
                       "one per shard", done.returncode == 0 and present == len(tars))

    # -- 10 classes without names: a run must not silently train a 1,000-way head
    def ten_classes(self) -> None:
        ten = self.a.out / "ten-classes-wds"
        write_set(ten, TEN, None, self.clock)
        r = self.launcher.run("ten-classes", [sys.executable, "train.py", RECIPE, f"data.root={ten}",
                                              f"run.out={self.runs / 'ten'}", *self.model, "data.batch_size=32",
                                              "data.workers=0", "run.max_steps=1"], self.runs / "ten")
        head = re.search(r"(\d+) classes", r["stdout"])
        if r["rc"] == 0:
            ok = head is not None and head.group(1) == "10"
            value = f"trained a {head.group(1) if head else '?'}-way head" + ("" if ok else ", silently")
        else:
            last = ([x for x in r["stderr"].splitlines() if x.strip()] or [""])[-1]
            value = f"refused, exit {r['rc']}: {last.replace(str(self.a.out), 'OUT')[:200]}"
            ok = r["rc"] == 2 and "Traceback" not in r["stderr"] and last.startswith("error:") and "classes" in last
        self.table.add("10 classes without class names", value, "a 10-way head, or one line asking for classes.txt", ok)

    # -- to step `prefix` uninterrupted, and the same stopped by SIGTERM mid-epoch then resumed
    def resume(self) -> None:
        cap, prefix = f"run.max_steps={self.prefix}", self.prefix
        whole = self.watched("torch", self.launcher.run(f"torch-to-step-{prefix}", self.train_cmd(self.whole, cap),
                                                        self.whole, total=prefix))
        took = whole["first_step"]
        self.table.add("time to the first step (torch, from launch)", f"{took:.0f} s" if took else "no step",
                       "(measured)", None if took else False)
        first = self.watched("torch", self.launcher.run("torch-sigterm", self.train_cmd(self.stopped, cap),
                                                        self.stopped, stop_at=self.a.stop_at))
        at = STOPPED.findall(first["stdout"])
        again = self.watched("torch", self.launcher.run("torch-resumed", self.train_cmd(self.stopped, cap),
                                                        self.stopped, total=prefix))
        check = "SIGTERM mid-epoch, then the same command"
        if whole["rc"] or not at or again["rc"]:
            why = (reason(whole["stderr"]) if whole["rc"] else reason(again["stderr"]) if at and again["rc"]
                   else "no 'stopped by SIGTERM' line: " + reason(first["stderr"]))
            self.table.add(check, f"failed: {why}", "stops, then resumes to the end", False)
            return
        resumed = f"resuming at step {at[0]}" in again["stdout"]
        value = f"stopped at step {at[0]} of {prefix}, resumed" + ("" if resumed else " (no 'resuming' line)")
        self.table.add(check, value, f"stopped before step {prefix}, resumed", resumed and int(at[0]) < prefix)
        differ, tensors = same_weights(self.whole / "last.pt", self.stopped / "last.pt")
        self.table.add("resumed = uninterrupted: weights (last.pt)", f"{differ} of {tensors} tensors differ",
                       "bit for bit", differ == 0)
        mine, theirs = records(self.whole), records(self.stopped)
        where = next((i for i, (x, y) in enumerate(zip(mine, theirs)) if x != y), min(len(mine), len(theirs)))
        self.table.add("resumed = uninterrupted: metrics.jsonl",
                       f"{len(mine)} lines, " + ("equal" if mine == theirs else f"differ from line {where + 1}"),
                       "equal, timings aside", mine == theirs and bool(mine))

    # -- the first run continued past its epoch's end (run.max_steps is a resumable change)
    def epoch(self) -> None:
        end, steps = self.end, self.steps
        r = self.watched("torch", self.launcher.run("torch-epoch", self.train_cmd(self.whole, f"run.max_steps={end}"),
                                                    self.whole, total=end))
        reached = last_step(self.whole)
        self.table.add("through the epoch boundary (torch loader)",
                       f"step {reached:,}, {r['wall']:.0f} s" if r["rc"] == 0 else
                       f"failed at step {reached:,}: {reason(r['stderr'])}", f"step {end:,} (epoch 2)",
                       r["rc"] == 0 and reached == end)
        told = re.search(r"([\d,]+) steps/epoch", r["stdout"])
        told = int(told.group(1).replace(",", "")) if told else None
        self.table.add("steps per epoch (the trainer's)", f"{told:,}" if told else "not printed",
                       f"floor({self.n:,} / {self.batch:,}) = {steps:,}", told == steps)
        evals = [x for x in records(self.whole) if "val_images" in x]
        at_end = [x["val_images"] for x in evals if x["step"] == steps]
        self.table.add("val samples counted (torch, epoch end)",
                       f"{at_end[0]:,}" if at_end else f"no evaluation at step {steps:,}",
                       f"{self.plan['val']:,}, each once", at_end == [self.plan["val"]])

    # -- the samples an epoch uses: the loaders' own order, over every process
    def samples_per_epoch(self) -> None:
        import yaml
        from bot.data import sampling

        seed = yaml.safe_load((self.whole / "config.yaml").read_text())["run"]["seed"]
        for epoch in (0, 1):
            used = np.concatenate([sampling.train_order(self.n, seed, epoch, rank, self.world, self.batch // self.world)
                                   for rank in range(self.world)])
            distinct = len(np.unique(used))
            self.table.add(f"samples used in epoch {epoch + 1} (train_order, {self.world} processes)",
                           f"{distinct:,} distinct, {len(used) - distinct:,} repeated",
                           f"{self.steps:,} x {self.batch:,} = {self.steps * self.batch:,} (docs/distributed.md)",
                           distinct == len(used) == self.steps * self.batch)

    # -- summary top-1 against evaluate.py on best.pt, on one process
    def top1(self) -> None:
        """The run's own figures for best.pt (summary.json's best top-1, the evaluation line of its
        step) against evaluate.py's on one process: the same model must give the same top-1, and
        the same loss to evaluate.py's 4 decimals (the loss differs even where an untrained
        model's top-1 does not)."""
        import torch

        check = "summary top-1 and val loss = evaluate.py's of best.pt"
        per_class = self.runs / "per-class.csv"
        r = self.launcher.run("evaluate", [sys.executable, "scripts/evaluate.py", str(self.whole), "--per-class",
                                           str(per_class)])
        if r["rc"] or not (self.whole / "summary.json").is_file():
            self.table.add(check, f"failed: {reason(r['stderr']) if r['rc'] else 'no summary.json'}", "equal", False)
            return
        summary = json.loads((self.whole / "summary.json").read_text())
        best = torch.load(self.whole / "best.pt", weights_only=False, map_location="cpu")
        logged = [x["val_loss"] for x in records(self.whole) if "val_loss" in x and x["step"] == best["step"]][-1]
        top1, images = evaluate_top1(per_class.read_text())
        loss = float(next(row for row in r["stdout"].splitlines() if re.match(r"\| \d", row)).split("|")[-2])
        same = (all(math.isclose(x, top1, abs_tol=1e-9) for x in (summary["best_top1"], best["top1"]))
                and math.isclose(logged, loss, abs_tol=1e-4))
        value = (f"run: top-1 {summary['best_top1']:.3f}, loss {logged:.4f} (best.pt, step {best['step']}); "
                 f"evaluate.py: {top1:.3f}, {loss:.4f} on {images:,}")
        self.table.add(check, value, "equal", same)

    # -- DALI: a few steps and an evaluation
    def dali(self) -> None:
        check, steps = "DALI: steps and an evaluation", self.a.dali_steps
        if steps == 0:
            self.table.add(check, "not run (--dali-steps 0)", "", None)
            return
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            self.table.add(check, "nvidia-dali is not installed", "", None)
            return
        out = self.runs / "dali"
        command = self.train_cmd(out, f"run.max_steps={steps}", backend="dali")
        r = self.watched("dali", self.launcher.run("dali", command, out, total=steps))
        counted = [x["val_images"] for x in records(out) if "val_images" in x]
        ok = r["rc"] == 0 and last_step(out) == steps and counted[-1:] == [self.plan["val"]]
        self.table.add(check, f"{last_step(out)} steps, val {counted[-1]:,}" if r["rc"] == 0 and counted
                       else f"failed: {reason(r['stderr'])}", f"{steps} steps, val {self.plan['val']:,}", ok)

    # -- what each kind of process held at its peak
    def resources(self) -> None:
        from bot.data import shards

        for kind, by_role in self.peaks.items():
            for name in ("trainer", "loader worker", "fork server", "resource tracker", "torchrun"):
                p = by_role.get(name)
                if p is None:
                    continue
                self.table.add(f"peak per {name} ({kind}, {p['processes']} at once)",
                               f"{p['fds']:,} fds ({p['train_tars']:,} train + {p['val_tars']:,} val shards), "
                               f"RSS {mib(p['rss'])}, PSS {mib(p['pss'])}, USS {mib(p['uss'])}",
                               f"under {self.a.nofile:,} fds; at most {shards.OPEN_SHARDS} shards a split",
                               p["fds"] < self.a.nofile and max(p["train_tars"], p["val_tars"]) <= shards.OPEN_SHARDS)
            if self.total_pss[kind]:
                self.table.add(f"memory of all processes ({kind}, peak PSS)", mib(self.total_pss[kind]), "(measured)",
                               None)
        self.table.add("least available memory", mib(self.least_available), "(measured)", None)


def main(argv=None) -> int:
    first, _, rest = __doc__.strip().partition("\n")  # as bot.cli.command_parser lays out --help
    p = argparse.ArgumentParser(description=first, epilog=rest.strip("\n"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "data/rehearse", help="the shard sets (kept, reused) and runs")
    p.add_argument("--processes", type=int, default=8, help="torchrun processes (gloo, on the CPU)")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of ImageNet's sample and shard counts")
    p.add_argument("--train-shards", type=int, default=None, help="instead of 1,024 x scale")
    p.add_argument("--val-shards", type=int, default=None, help="instead of 64 x scale")
    p.add_argument("--batch", type=int, default=4096, help="global batch (data.batch_size)")
    p.add_argument("--workers", type=int, default=1, help="loader workers per process (data.workers)")
    p.add_argument("--prefix", type=int, default=10, help="steps of the runs compared bit for bit")
    p.add_argument("--stop-at", type=int, default=4, help="SIGTERM once this step is logged")
    p.add_argument("--past", type=int, default=2, help="steps trained past the first epoch's end")
    p.add_argument("--dali-steps", type=int, default=3, help="steps of the DALI run; 0: no DALI run")
    p.add_argument("--crop", choices=sorted(CROPS), default="padded",
                   help="padded: CIFAR's crop at 20 px (cheap); resized: the random-resized crop to 16 px")
    p.add_argument("--skip", nargs="+", default=[], choices=["epoch", "dali"],
                   help="phases not to run: epoch (the first run continued past its epoch's end), dali")
    p.add_argument("--nofile", type=int, default=1024, help="the descriptor limit (ulimit -n) of every launch")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between looks at the processes")
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose commands run (default: this one)")
    p.add_argument("--keep", action="store_true", help="keep the runs and their logs (OUT/runs)")
    a = p.parse_args(argv)
    a.repo, a.out = a.repo.resolve(), a.out.resolve()
    if a.batch % a.processes:
        p.error(f"--batch {a.batch} is not divisible by --processes {a.processes}")
    steps = plan_of(a)["train"] // a.batch
    if not 0 < a.stop_at < a.prefix < steps:
        p.error(f"an epoch of {steps} steps at --batch {a.batch} leaves no room for --stop-at {a.stop_at} before "
                f"--prefix {a.prefix} before its end: give a smaller --batch")
    for root, plan in ((a.out / "imagenet-wds", plan_of(a)), (a.out / "ten-classes-wds", TEN)):
        why = refusal(root, plan)
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
    try:
        return Rehearsal(a).run()
    except KeyboardInterrupt:  # the launch in progress is killed, the runs removed (--keep aside)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
