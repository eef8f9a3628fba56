"""Shards streamed over http from a local http.server on 127.0.0.1: the order (each sample at
most once, the same whatever the resume step), validation once per sample, the shard count
check, and a dropped or stalled connection (retried, then one clear line, never a hang)."""

from __future__ import annotations

import functools
import itertools
import json
import shutil
import http.server
import threading
import time

import pytest

from bot import config
from bot.cli.make_shards import make_shards
from bot.data import build_loaders, build_val_loader
from bot.data import stream
from bot.data.shards import index_path, read_index
from bot.errors import UserError


@pytest.fixture(scope="module")
def shards(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "toy"
    make_shards(toy, out, seed=1, shard_samples=10, progress=False)  # 10 train shards, 4 val shards
    return out


class Quiet(http.server.SimpleHTTPRequestHandler):
    fail = None  # "drop": cut the first answer for each file short; "stall": never answer a shard

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.fail == "stall" and self.path.endswith(".tar"):
            time.sleep(30)
            return
        if self.fail == "drop" and self.path.endswith(".tar") and self.path not in self.server.dropped:
            self.server.dropped.add(self.path)
            data = open(self.translate_path(self.path), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])  # then the connection closes
            return
        if self.fail == "often" and self.path.endswith(".tar"):  # each answer 1 KiB further, then closed
            tries = self.server.tries[self.path] = self.server.tries.get(self.path, 0) + 1
            data = open(self.translate_path(self.path), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:1024 * tries])
            return
        super().do_GET()


@pytest.fixture
def serve(shards):
    servers = []

    def start(fail=None, directory=shards):
        handler = type("Handler", (Quiet,), {"fail": fail})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        server.dropped, server.tries, server.daemon_threads = set(), {}, True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()


class Indices:
    """Stands in for the decoder: a sample is its index, so the order can be read back."""
    transform = None

    def decode(self, data, index):
        return index

    def augment(self, image, seed, size):
        return image


def epoch(data, workers, batch):
    """What a DataLoader yields from `data` with `workers` workers: batch k from worker k mod workers."""
    streams = [data.worker_samples(w) for w in range(workers)]
    batches, k = [], 0
    while True:
        chunk = list(itertools.islice(streams[k % workers], batch))
        if len(chunk) < batch:
            return batches
        batches.append([i for i, _ in chunk])
        k += 1


def test_each_sample_at_most_once_and_resume_gives_the_rest(serve):
    train, _ = stream.open_stream(serve())
    make = lambda rank, world: stream.StreamTrain(train, Indices(), 7, rank, world, 4, 2, 10, lambda e: 32)  # noqa: E731
    seen, wholes = [], []
    for rank in range(2):
        data = make(rank, 2)
        data.epoch = 3
        whole = epoch(data, 2, 4)
        assert len(whole) == data.per_worker * 2 == 3 * 2  # 2 shards a worker, of 6 samples at least: 3 batches
        seen += [i for b in whole for i in b]
        wholes.append(whole)
        data.start = 3
        assert epoch(data, 2, 4)[:len(whole) - 3] == whole[3:]  # a resume at step 3 with the same workers
    assert len(seen) == len(set(seen)) == 48 and set(seen) <= set(range(96))
    data = make(0, 2)
    data.epoch = 4
    assert epoch(data, 2, 4) != wholes[0]  # another epoch, another order


def test_the_real_loader_streams_what_the_order_says(serve, toy):
    url = serve()
    cfg = config.load(None, [f"data.root={url}", "data.image_size=32", "data.batch_size=4", "data.workers=2",
                             "data.shuffle_buffer=10", "run.seed=7"])
    train, val = build_loaders(cfg, 0, 1, "cpu")
    train.set_epoch(2, start_step=1)
    got = [(x.shape, y.tolist()) for x, y in train]
    split, _ = stream.open_stream(url)
    data = stream.StreamTrain(split, Indices(), 7, 0, 1, 4, 2, 10, lambda e: 32)
    data.epoch, data.start = 2, 1
    expected = [[label_of(split, i) for i in b] for b in epoch(data, 2, 4)]
    assert [y for _, y in got] == expected and got[0][0] == (4, 3, 32, 32)
    every = [label for k in range(len(val.data.split.filenames)) for _, _, label in val.data.split.samples(k)]
    assert len(val) == 8  # 4 shards of 8 samples over 2 workers, batches of 4 (iterated below without workers)
    cfg.data.workers = 0
    alone = build_val_loader(cfg, 0, 1, "cpu")  # what scripts/evaluate.py reads
    assert sorted(y for _, ys in alone for y in ys.tolist()) == sorted(every)


def label_of(split, i):
    k = int(split.starts.searchsorted(i, "right")) - 1
    for index, _, label in split.samples(k):
        if index == i:
            return label
    raise AssertionError(i)


def test_validation_sees_every_sample_once_under_any_world(serve):
    _, val = stream.open_stream(serve())
    for world, workers in ((1, 1), (2, 2), (3, 1)):
        seen = [index for rank in range(world) for w in range(workers)
                for k in stream.StreamVal(val, Indices(), rank, world, workers).shards(w)
                for index, _, _ in val.samples(k)]
        assert sorted(seen) == list(range(len(val))), (world, workers)


def test_too_few_shards_for_the_workers_is_one_clear_line(serve):
    train, _ = stream.open_stream(serve())
    with pytest.raises(UserError, match=r"10 training shards cannot feed 4 process\(es\) x 3 worker\(s\)"):
        stream.StreamTrain(train, Indices(), 0, 0, 4, 2, 3, 10, lambda e: 32)


def test_a_dropped_connection_is_retried(serve):
    good = stream.open_stream(serve())[0]
    flaky = stream.open_stream(serve("drop"))[0]
    assert [(i, label) for i, _, label in flaky.samples(2)] == [(i, label) for i, _, label in good.samples(2)]


def test_the_tries_count_failures_in_a_row_not_in_a_shard(serve, monkeypatch):
    """A connection that drops again and again, each time after some progress: more drops than
    TRIES in one shard, none in a row without progress, so the shard is read whole."""
    monkeypatch.setattr(stream, "TRIES", 2)
    monkeypatch.setattr(stream.time, "sleep", lambda s: None)  # the back-off is not what is tested
    good = stream.open_stream(serve())[0]
    flaky = stream.open_stream(serve("often"))[0]
    assert [(i, label) for i, _, label in flaky.samples(2)] == [(i, label) for i, _, label in good.samples(2)]


def test_a_stalled_server_is_one_clear_line_not_a_hang(serve, monkeypatch):
    monkeypatch.setattr(stream, "TIMEOUT_S", 0.3)
    monkeypatch.setattr(stream, "TRIES", 2)
    url = serve("stall")
    train, _ = stream.open_stream(url)
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"cannot read {url}train-000000.tar \(byte 0\): .*timed out; gave up after 2 "
                                        rf"tries of 0.3 s"):
        list(train.samples(0))
    assert time.monotonic() - start < 5


def test_a_bad_image_is_one_line_naming_the_shard_and_key(serve, shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    tar = bad / "train-000001.tar"
    (_, offset, size, name), _ = read_index(index_path(tar))[4]
    with open(tar, "r+b") as f:
        f.seek(offset)
        f.write(b"x" * size)
    url = serve(directory=bad)
    train, _ = stream.open_stream(url)
    index, data, _ = list(train.samples(1))[4]
    with pytest.raises(UserError) as e:
        stream.StreamImages(train).decode(data, index)
    assert str(e.value) == f"cannot read image {url}train-000001.tar (sample {name.split('.')[0]}): not an image file"


def test_a_truncated_or_miscounted_shard_is_one_line_naming_it(serve, shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    samples = read_index(index_path(bad / "train-000002.tar"))
    with open(bad / "train-000002.tar", "r+b") as f:
        f.truncate(samples[6][0][1] + 10)  # into sample 6's image
    info = json.loads((bad / "_info.json").read_text())
    info["splits"]["train"]["shard_lengths"][:2] = [11, 9]
    (bad / "_info.json").write_text(json.dumps(info))
    url = serve(directory=bad)
    train, _ = stream.open_stream(url)
    with pytest.raises(UserError, match=rf"^shard {url}train-000002.tar is truncated or not a tar \(after sample "
                                        rf"{samples[5][0][3].split('.')[0]}\)"):
        list(train.samples(2))
    with pytest.raises(UserError, match=rf"^shard {url}train-000000.tar holds 10 samples, _info.json says 11$"):
        list(train.samples(0))


def test_class_names_and_the_held_out_split_come_from_the_server(serve, shards, tmp_path):
    """classes.txt beside an _info.json that names no classes is read over http as on disk, and
    data.val_split names the held-out split (here "test", as CIFAR's)."""
    root = tmp_path / "plain"
    shutil.copytree(shards, root)
    info = json.loads((root / "_info.json").read_text())
    del info["classes"]
    info["splits"]["test"] = info["splits"].pop("validation")
    (root / "_info.json").write_text(json.dumps(info))
    url = serve(directory=root)
    with pytest.raises(UserError) as e:
        stream.open_stream(url, "test")
    assert str(e.value) == (f"{url.rstrip('/')} names no classes (_info.json has no 'classes' and there is no "
                            f"classes.txt beside it): write {url}classes.txt, one class name a line in label order")
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    train, test = stream.open_stream(url, "test")
    assert train.classes == test.classes == ["a", "b", "c", "d"] and len(test) == 32
    with pytest.raises(UserError, match=r"_info.json has no split validation or val \(it has \['test', 'train'\]"):
        stream.open_stream(url)
