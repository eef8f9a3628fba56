"""Write a dataset as WebDataset tar shards: see bot/cli/make_shards.py (installed as `bot-make-shards`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot, when not installed

from bot.cli.make_shards import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
