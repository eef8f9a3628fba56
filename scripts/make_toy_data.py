"""Write a small toy dataset of real JPEGs: see bot/cli/make_toy_data.py (installed as `bot-make-toy-data`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot, when not installed

from bot.cli.make_toy_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
