"""The score of `make mutation` per mutated file: mutants, killed, survived, other, killed %.

Reads `mutmut results --all true` (one "name: status" line a mutant) in the project root, after
a run; docs/testing.md lists the survivors judged equivalent, and why.

    python scripts/mutation_report.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict

LINE = re.compile(r"^\s*(?P<module>[\w.]+?)\.x(?:ǁ\w+ǁ)?_?\w*__mutmut_\d+: (?P<status>[\w ]+)$")


def counts(text: str) -> dict[str, Counter]:
    per_file: dict[str, Counter] = defaultdict(Counter)
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            per_file[m["module"].replace(".", "/") + ".py"][m["status"].strip()] += 1
    return per_file


def table(per_file: dict[str, Counter]) -> str:
    rows = ["| file | mutants | killed | survived | other | killed % |", "|---|---:|---:|---:|---:|---:|"]
    total: Counter = Counter()
    for name in sorted(per_file):
        c = per_file[name]
        total.update(c)
        rows.append(row(name, c))
    rows.append(row("**all**", total))
    return "\n".join(rows)


def row(name: str, c: Counter) -> str:
    n = sum(c.values())
    other = n - c["killed"] - c["survived"]
    return f"| {name} | {n} | {c['killed']} | {c['survived']} | {other} | {100 * c['killed'] / max(n, 1):.1f} |"


def main() -> int:
    done = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True)
    per_file = counts(done.stdout)
    if done.returncode or not per_file:
        print(f"error: no mutmut results here (run `make mutation` first){done.stderr[-500:]}", file=sys.stderr)
        return 2
    print(table(per_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
