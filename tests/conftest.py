import contextlib
import io
import subprocess
import sys
import warnings
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


@pytest.fixture(scope="session")
def toy_shards(toy, tmp_path_factory) -> Path:
    """`toy` as WebDataset shards in its own (label) order: the same samples at the same indices, so
    both loaders give the folder's batches from it (tests/test_shards.py) and a run on it is the
    folder's run, bit for bit."""
    from bot.cli.make_shards import make_shards

    out = tmp_path_factory.mktemp("toy-shards") / "toy"
    make_shards(toy, out, shuffle=False, shard_samples=10, progress=False)
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


def same_threads() -> dict:
    """The environment for a process that must compute bit for bit what this one computes (torch's
    float sums depend on its thread count, which a test may have changed here)."""
    import os

    import torch

    return os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())}


class OneProcess:
    """The part of accelerate's Accelerator a TrainStep (bot.train.trainer.build_step) uses, for
    one process on the CPU: tests of the step without a launcher."""
    num_processes = 1

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def prepare_model(self, model):
        return model

    def no_sync(self, model):
        return contextlib.nullcontext()

    def reduce(self, tensor, reduction="sum"):
        return tensor


def random_bn_statistics(model) -> None:
    """BatchNorm running statistics that are not the defaults (0 and 1), so that a buffer lost or
    mixed up on the way (export, ONNX, timm) changes the logits."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def run_cli(*args, cwd=ROOT, timeout=600):
    """Run a project script as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def call_main(main, *args, cwd=ROOT) -> subprocess.CompletedProcess:
    """A command's `main(argv)` run in this process, as run_cli runs its script in a new one but
    without a new interpreter's imports (seconds each): its exit status, stdout and stderr, with
    the warnings a fresh process would print. For tests where the process itself is not the point
    (signals, kill -9, torchrun and the installed package keep run_cli)."""
    out, err = io.StringIO(), io.StringIO()

    def show(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        warnings.resetwarnings()  # Python's own filters, not pytest's
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.showwarning = show
        try:
            status = main([str(a) for a in args])
        except SystemExit as e:  # argparse, or a command that exits itself
            status = e.code if isinstance(e.code, int) or e.code is None else print(e.code, file=err) or 1
    return subprocess.CompletedProcess([main.__module__, *map(str, args)], status or 0, out.getvalue(),
                                       err.getvalue())


def run_here(script, *args, cwd=ROOT) -> subprocess.CompletedProcess:
    """run_cli's call in this process where it can (call_main): train.py and scripts/NAME.py are
    bot/cli/NAME.py's main, and a script of scripts/ with a main(argv) of its own is loaded from its
    file; anything else (`-m torch.distributed.run ...`) runs in a new process through run_cli."""
    import importlib
    import importlib.util

    path = Path(script)
    name = "train" if path.name == "train.py" else path.stem
    ours = path.suffix == ".py" and path.parent.name in ("", ROOT.name, "scripts")
    if ours and (ROOT / "bot/cli" / f"{name}.py").is_file():
        return call_main(importlib.import_module(f"bot.cli.{name}").main, *args, cwd=cwd)
    file = ROOT / "scripts" / path.name
    if ours and path.parent.name == "scripts" and "\ndef main(argv" in file.read_text():
        spec = importlib.util.spec_from_file_location(f"scripts_{name}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return call_main(module.main, *args, cwd=cwd)
    return run_cli(script, *args, cwd=cwd)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """`trained(recipe, *overrides)`: the run folder of that config, trained once per session in
    this process and shared by every test that asks for the same config (read it, never change it)."""
    runs = {}

    def get(recipe, *overrides) -> Path:
        key = (str(recipe), *map(str, overrides))
        if key not in runs:
            from bot import config
            from bot.train.trainer import train

            out = tmp_path_factory.mktemp("trained") / "run"
            with contextlib.chdir(ROOT):
                train(config.load(recipe, [*key[1:], f"run.out={out}"]))
            runs[key] = out
        return runs[key]

    return get


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (tests/test_cuda.py); skipped where there is none")


def pytest_collection_modifyitems(config, items):
    import torch

    fastest_first_under_a_mutant(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def fastest_first_under_a_mutant(items):
    """make mutation: mutmut runs a mutant's tests with -x, so the fastest first kill it soonest
    (its stats run timed each test, in mutants/mutmut-stats.json)."""
    import json
    import os

    if os.environ.get("MUTANT_UNDER_TEST", "") in ("", "stats", "fail", "list_all_tests", "mutant_generation"):
        return
    stats = Path("mutmut-stats.json")
    if stats.is_file():
        seconds = json.loads(stats.read_text()).get("duration_by_test", {})
        items.sort(key=lambda item: seconds.get(item.nodeid, 0.0))
