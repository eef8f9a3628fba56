"""Run an ablation grid and write its table: see bot/cli/ablate.py (installed as `bot-ablate`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot, when not installed

from bot.cli.ablate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
