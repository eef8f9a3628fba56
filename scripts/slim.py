"""Network slimming of a trained model: see bot/cli/slim.py (installed as `bot-slim`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot, when not installed

from bot.cli.slim import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
