import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    """A small toy dataset of real JPEGs: 4 classes, 24 train and 8 val images each."""
    out = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, str(ROOT / "scripts/make_toy_data.py"), str(out), "--classes", "4",
                    "--train", "24", "--val", "8", "--size", "64"], check=True, capture_output=True)
    return out


@contextlib.contextmanager
def tmpfs(folder: Path, options: str, why: str):
    """A 1 MiB tmpfs mounted on `folder` with `options` for the block (root only: skips with `why`
    where it cannot be mounted), for faults a real filesystem gives: a full disk, a read-only one."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options},size=1m", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(why)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def run_cli(*args, cwd=ROOT, timeout=600):
    """Run a project script as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (tests/test_cuda.py); skipped where there is none")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
