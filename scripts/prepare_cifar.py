"""Write the official CIFAR-10 or CIFAR-100 python archive as class folders of PNGs: see bot/cli/prepare_cifar.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot, when not installed

from bot.cli.prepare_cifar import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
