"""Compressed models side by side: see bot/cli/compress_report.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot, when not installed

from bot.cli.compress_report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
