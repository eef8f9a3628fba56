"""gluon-cv's train_cifar10.py loop written in plain torch and torchvision: a yardstick for the trainer.

    python scripts/cifar_reference.py data/cifar10 --epochs 8 --out runs/cifar10-reference.csv

It shares nothing with train.py but the network (bot.models.cifar, whose parameters are
gluon-cv's): its own loader (torchvision's ImageFolder, RandomCrop(32, padding=4) and flip),
torch's Xavier init, torch's SGD with Nesterov momentum, a constant lr of 0.1 (gluon-cv's first
100 epochs). If train.py's curve differs from gluon-cv's log and this one's does not, the
trainer is wrong; if this one differs alike, the cause is outside the trainer (the data, the
framework). It writes gluon-cv's log columns per epoch, as a CSV that compare_log.py reads:
epoch (from 0), val_acc and train_acc (fractions), train_loss (the epoch's mean).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot, when not installed

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # gluon-cv's, of the 0-1 scale


def loaders(root: Path, batch: int, workers: int, seed: int):
    from torchvision import datasets, transforms

    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    val_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train = datasets.ImageFolder(root / "train", train_tf)
    val = datasets.ImageFolder(root / "test", val_tf)
    g = torch.Generator().manual_seed(seed)
    return (torch.utils.data.DataLoader(train, batch, shuffle=True, drop_last=True, num_workers=workers,
                                        generator=g, persistent_workers=workers > 0),
            torch.utils.data.DataLoader(val, 500, num_workers=workers))


def network(arch: str) -> nn.Module:
    from bot.models.cifar import CIFAR_ARCHS

    builder, depth, arg = CIFAR_ARCHS[arch]
    model = builder(depth, arg, 10)
    for m in model.modules():  # mx.init.Xavier(): uniform, magnitude 3 = torch's gain 1; BN 1 and 0
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    right = total = 0
    for x, y in loader:
        right += (model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum().item()
        total += len(y)
    return right / total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a CIFAR-10 folder with train/ and test/ class folders")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write (one line an epoch, as it ends)")
    p.add_argument("--arch", default="cifar_resnet20_v1")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=128, help="gluon-cv's 128; the lr scales with it (0.1 at 128)")
    a = p.parse_args(argv)
    missing = [str(a.root / split) for split in ("train", "test") if not (a.root / split).is_dir()]
    if missing:
        print(f"error: {a.root} needs train/ and test/ class folders (prepare_cifar.py writes them); "
              f"missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    torch.manual_seed(a.seed)
    train, val = loaders(a.root, a.batch, a.workers, a.seed)
    model = network(a.arch).to(memory_format=torch.channels_last)  # faster on a CPU, same sums
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * a.batch / 128, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("w", newline="") as f:
        f.write(f"# scripts/cifar_reference.py {a.root} --arch {a.arch} --seed {a.seed} --batch {a.batch}\n")
        out = csv.writer(f)
        out.writerow(["epoch", "val_acc", "train_acc", "train_loss"])
        for epoch in range(a.epochs):
            model.train()
            tic, loss_sum, right, seen = time.time(), 0.0, 0, 0
            for x, y in train:
                logits = model(x.contiguous(memory_format=torch.channels_last))
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(y)
                right += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            val_acc = accuracy(model, val)
            out.writerow([epoch, f"{val_acc:.6f}", f"{right / seen:.6f}", f"{loss_sum / seen:.6f}"])
            f.flush()
            print(f"[Epoch {epoch}] train={right / seen:.6f} val={val_acc:.6f} loss={loss_sum / seen:.6f} "
                  f"time: {time.time() - tic:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
