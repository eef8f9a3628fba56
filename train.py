"""Train a recipe:  python train.py RECIPE [dotted.key=value ...] [--print-config]

    python train.py recipes/resnet50-all-tricks.yaml data.root=/data/imagenet
    accelerate launch --config_file configs/accelerate/8gpu.yaml train.py recipes/efficient.yaml data.root=...

The command itself is bot/cli/train.py (installed as `bot-train`).
"""

import sys

from bot.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
