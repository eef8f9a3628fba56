"""int8 quantization of a trained model: see bot/cli/quantize.py (installed as `bot-quantize`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bot, when not installed

from bot.cli.quantize import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
