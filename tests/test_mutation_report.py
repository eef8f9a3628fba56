"""scripts/mutation_report.py: mutmut's result lines counted per file."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from mutation_report import counts, table  # noqa: E402


def test_results_are_counted_per_file_with_methods_and_every_status():
    text = """
    bot.data.shards.xǁShardǁ__init____mutmut_52: survived
    bot.data.shards.xǁShardSplitǁsample__mutmut_5: killed
    bot.data.shards.x_split_key__mutmut_4: killed
    bot.train.losses.x_mixup_lambda__mutmut_7: survived
    bot.train.losses.x_cutmix__mutmut_1: killed
    bot.train.losses.x_cutmix__mutmut_2: no tests
    bot.train.losses.x_cutmix__mutmut_3: timeout
    not a result line
"""
    per_file = counts(text)
    assert {k: dict(v) for k, v in per_file.items()} == {
        "bot/data/shards.py": {"survived": 1, "killed": 2},
        "bot/train/losses.py": {"survived": 1, "killed": 1, "no tests": 1, "timeout": 1}}
    lines = table(per_file).splitlines()
    assert lines[2] == "| bot/data/shards.py | 3 | 2 | 1 | 0 | 66.7 |"
    assert lines[3] == "| bot/train/losses.py | 4 | 1 | 1 | 2 | 25.0 |"
    assert lines[4] == "| **all** | 7 | 3 | 2 | 2 | 42.9 |"
