"""Evaluate a trained model: see bot/cli/evaluate.py (installed as `bot-evaluate`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot, when not installed

from bot.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
