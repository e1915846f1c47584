"""Shard sets in object storage (data/store.py), against moto's S3 server, Python's http.server
and a faulty proxy, all on 127.0.0.1 and started and stopped here."""
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from data import store
from data.manifest import DataSetError, has_splits, load_shard_set
from data.shard_reader import _VERIFIED, shard_intact
from data.stream import EvalStream, StreamConfig, TrainStream
from tests.storage import FaultyProxy, HttpServer, s3_env

PATIENCE = 4.0
# Every connection misbehaves: most are cut after 3-30 KB (so each still moves the read on),
# the others refused, answered 503 or held silent until the read time-out.
FAULTS = dict(cut=0.75, error=0.1, refuse=0.1, stall=0.05, cut_bytes=(3000, 30000))


def cfg_for(path, **kw):
    base = dict(shards=path, batch_size=2, num_workers=0, num_frames=8, stride=2, size=32,
                patch=8, shuffle_buffer=4, seed=3, store_patience=PATIENCE)
    base.update(kw)
    return StreamConfig(**base)


def batches(cfg, n):
    out = []
    for b in TrainStream(cfg):
        out.append({k: v for k, v in b.items() if isinstance(v, torch.Tensor)})
        if len(out) == n:
            return out


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.fixture(autouse=True)
def fresh_clients():
    """Each test's endpoint gets its own client, and no shard is known damaged yet."""
    store._CLIENTS.clear()
    _VERIFIED.clear()
    yield
    store._CLIENTS.clear()
    _VERIFIED.clear()


@pytest.fixture
def served(synthetic_set, s3, tmp_path):
    """The shared synthetic set in S3, over http and through a pipe: {kind: url}."""
    s3.bucket("sets")
    s3.upload(synthetic_set, "s3://sets/syn")
    web = HttpServer(os.path.dirname(synthetic_set))
    name = os.path.basename(synthetic_set)
    yield {"s3": "s3://sets/syn", "http": f"{web.url}/{name}",
           "pipe": f"pipe:cat {synthetic_set}/{{}}"}
    web.stop()


@pytest.mark.parametrize("kind", ["s3", "http", "pipe"])
def test_a_set_in_a_store_streams_the_batches_of_the_local_set(synthetic_set, served, kind):
    url = served[kind]
    assert has_splits(url)
    remote = load_shard_set(url, "val")
    local = load_shard_set(synthetic_set, "val")
    assert [(s.name, s.sha256) for s in remote.shards] == \
        [(s.name, s.sha256) for s in local.shards]
    assert remote.shards[0].url.startswith(url.split("{}")[0].rstrip("/"))
    same(batches(cfg_for(url), 5), batches(cfg_for(synthetic_set), 5))
    ev = [b for b in EvalStream(cfg_for(url, num_workers=1, batch_size=3), "val")]
    ev_local = [b for b in EvalStream(cfg_for(synthetic_set, num_workers=1, batch_size=3), "val")]
    same([{k: v for k, v in b.items() if torch.is_tensor(v)} for b in ev],
         [{k: v for k, v in b.items() if torch.is_tensor(v)} for b in ev_local])


@pytest.mark.slow
@pytest.mark.parametrize("kind,seed", [("s3", 0), ("s3", 1), ("http", 0), ("http", 2),
                                       ("http-no-ranges", 0), ("http-no-ranges", 1)])
def test_cut_reset_and_failing_connections_give_the_same_batches(synthetic_set, served, s3,
                                                                 monkeypatch, kind, seed):
    """A proxy that cuts answers mid-body, refuses connections, answers 503 and stalls: every
    read is retried and resumed where it broke (a range; from a server that ignores ranges,
    the bytes already had are read again and skipped), and the stream is the local set's."""
    web, faults = None, dict(FAULTS)
    if kind == "http-no-ranges":   # an answer must get further than the last one did: one in
        # five is whole
        faults.update(cut=0.8, error=0.0, refuse=0.0, stall=0.0, cut_bytes=(10000, 100000))
    if kind == "s3":
        proxy = FaultyProxy(s3.port, seed=seed, **faults)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        url = "s3://sets/syn"
    else:
        web = HttpServer(os.path.dirname(synthetic_set), ranges=kind == "http")
        proxy = FaultyProxy(web.port, seed=seed, **faults)
        url = f"{proxy.url}/{os.path.basename(synthetic_set)}"
    before = store.RETRIES["reopened"]
    try:
        got = batches(cfg_for(url, batch_size=4), 8)
    finally:
        proxy.stop()
        if web:
            web.stop()
    same(got, batches(cfg_for(synthetic_set, batch_size=4), 8))
    print(f"{kind} seed {seed}: {proxy.counts}")
    assert proxy.counts["cut"] >= 3, proxy.counts
    assert store.RETRIES["reopened"] - before >= 3      # (a cut in a read abandoned at the end
                                                        # is counted by the proxy only)


def test_a_store_that_stays_down_ends_in_one_line_naming_the_url(served, s3, monkeypatch):
    proxy = FaultyProxy(s3.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    shard_set = load_shard_set("s3://sets/syn")
    proxy.down = True
    t0 = time.monotonic()
    try:
        with pytest.raises(DataSetError) as e:
            next(iter(TrainStream(cfg_for("s3://sets/syn"), shard_set=shard_set)))
    finally:
        proxy.stop()
    took = time.monotonic() - t0
    assert PATIENCE <= took < PATIENCE + 10
    msg = str(e.value)
    assert "\n" not in msg and "s3://sets/syn/train/shard-" in msg
    assert "data.store_patience" in msg
    # and when the store is down from the start: the manifest's URL, in one line
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    store._CLIENTS.clear()
    with pytest.raises(DataSetError, match="s3://sets/syn/manifest.json: the store failed"):
        load_shard_set("s3://sets/syn", options=store.StoreOptions(patience=1))


def test_missing_incomplete_and_refused_sets_are_one_line(s3, tmp_path, monkeypatch):
    s3.bucket("empty")
    with pytest.raises(DataSetError, match=r"s3://empty/none is not a prepared shard set "
                                           r"\(no manifest.json there\); check the URL"):
        load_shard_set("s3://empty/none")
    s3.client().put_object(Bucket="empty", Key="half/.progress.jsonl", Body=b"{}\n")
    with pytest.raises(DataSetError, match="prep was interrupted"):
        load_shard_set("s3://empty/half")
    with pytest.raises(ValueError) as e:
        load_shard_set("https://user:hunter2@127.0.0.1:9/set")
    assert "hunter2" not in str(e.value) and "~/.netrc" in str(e.value)
    with pytest.raises(ValueError, match=r"\{\}"):
        load_shard_set("pipe:cat /somewhere")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    store._CLIENTS.clear()
    with pytest.raises(DataSetError, match="access denied .*AWS_ACCESS_KEY_ID"):
        load_shard_set("s3://empty/none")


def test_a_shard_damaged_in_the_store_is_named_by_its_url(synthetic_set, s3, caplog):
    """Same size, one byte changed: found by the sha256 computed while it streams; warned about
    with its URL and skipped from then on, or the run stopped under data.strict."""
    s3.bucket("bad")
    s3.upload(synthetic_set, "s3://bad/syn")
    ss = load_shard_set("s3://bad/syn", "val")
    victim = ss.shards[0]
    with open(os.path.join(synthetic_set, "val", victim.name), "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    s3.client().put_object(Bucket="bad", Key=f"syn/val/{victim.name}", Body=bytes(data))
    with caplog.at_level(logging.WARNING):
        list(EvalStream(cfg_for("s3://bad/syn", batch_size=4), "val"))
    assert any(victim.url in r.getMessage() and "sha256" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert not shard_intact(victim)
    _VERIFIED.clear()
    with pytest.raises(DataSetError, match=f"{victim.url} does not match the sha256"):
        list(EvalStream(cfg_for("s3://bad/syn", batch_size=4, strict=True), "val"))


def test_the_cache_serves_later_reads_refetches_a_damaged_file_and_evicts_lru(
        synthetic_set, served, s3, monkeypatch, tmp_path, caplog):
    cache = tmp_path / "cache"
    ss = load_shard_set("s3://sets/syn", "train")
    sizes = sorted(s.bytes for s in ss.shards)
    limit = sizes[-1] + sizes[-2] + sizes[-2] // 2     # room for two shards, not three
    cfg = cfg_for("s3://sets/syn", cache_dir=str(cache), cache_size=str(limit),
                  num_workers=0)
    ev = list(EvalStream(cfg, "train"))
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 2 and all(n.endswith(".tar") for n in cached), cached
    assert sum(p.stat().st_size for p in cache.iterdir()) <= limit
    last_two = {f"{s.sha256}.tar" for s in ss.shards[-2:]}   # the read order is the shards'
    assert set(cached) == last_two
    # the store goes away: the cached shards are still read (a sample of the last shard)
    proxy = FaultyProxy(s3.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    store._CLIENTS.clear()
    proxy.down = True
    from data.plan import plan_units
    from data.shard_reader import numbered_samples
    unit = plan_units([s.samples for s in ss.shards], 1)[-1]
    last = ss.shards[unit.shard]
    got = [j for j, _ in numbered_samples(last.url, unit, set(range(unit.count)), last,
                                          options=cfg.store_options())]
    assert got == list(range(last.samples))
    # a cached file damaged on disk is deleted and fetched again
    proxy.down = False
    path = cache / f"{last.sha256}.tar"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    from data import shard_cache
    shard_cache._CHECKED.clear()
    with caplog.at_level(logging.WARNING):
        got = [j for j, _ in numbered_samples(last.url, unit, set(range(unit.count)), last,
                                              options=cfg.store_options())]
    proxy.stop()
    assert got == list(range(last.samples))
    assert any("damaged; it is fetched again" in r.getMessage() for r in caplog.records)
    from data.manifest import file_sha256
    assert file_sha256(str(path)) == last.sha256
    assert len(ev) == len(list(EvalStream(cfg_for(synthetic_set), "train")))


def _objects(moto, url):
    return moto.objects(url)


@pytest.mark.slow
def test_prep_to_s3_killed_and_resumed_gives_the_objects_of_an_uninterrupted_prep(s3, tmp_path):
    s3.bucket("out")
    args = ["synthetic", "--count", "240", "--size", "16", "--frames", "8",
            "--shard-samples", "2", "--workers", "0"]
    env = {**os.environ, **s3_env(s3.endpoint), "TUBEMAE_STAGING": str(tmp_path / "stage")}
    cmd = [sys.executable, "-m", "data.prep", *args]
    r = subprocess.run([*cmd, "--out", "s3://out/straight"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    straight = _objects(s3, "s3://out/straight")
    assert {"train/manifest.json", "val/manifest.json", "test/manifest.json"} <= set(straight)
    # killed once some train shards are up, and before its manifest
    p = subprocess.Popen([*cmd, "--out", "s3://out/cut"], env=env, stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL)
    end = time.time() + 120
    while time.time() < end:
        keys = [k for k in s3.keys("s3://out/cut") if k.startswith("train/shard-")]
        if len(keys) >= 4:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    cut = _objects(s3, "s3://out/cut")
    assert "train/manifest.json" not in cut and len(keys) >= 4
    with pytest.raises(DataSetError, match="prep was interrupted"):
        load_shard_set("s3://out/cut")
    shutil.rmtree(tmp_path / "stage")      # resumed on another machine: the store's journal
    r = subprocess.run([*cmd, "--out", "s3://out/cut"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming after" in r.stderr
    assert _objects(s3, "s3://out/cut") == straight
    r = subprocess.run([*cmd, "--out", "s3://out/cut", "--verify"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "every shard intact" in r.stderr, r.stderr


def test_a_k_shot_subset_of_a_set_in_s3_is_the_local_sets(synthetic_set, served, tmp_path):
    """What finetune.study makes of a set in a store: the same train shards as from the local
    folder, and val/test linked to one checked local copy."""
    from data.prep.cli import main as prep_main
    for src, out in (("s3://sets/syn", "remote"), (synthetic_set, "local")):
        assert prep_main(["subset", src, "--per-class", "2", "--out",
                          str(tmp_path / "k" / out)]) == 0
    for split in ("train", "val", "test"):
        a, b = (load_shard_set(str(tmp_path / "k" / o), split) for o in ("remote", "local"))
        assert [(s.name, s.sha256) for s in a.shards] == [(s.name, s.sha256) for s in b.shards]
    assert os.path.realpath(tmp_path / "k" / "remote" / "val").startswith(
        str(tmp_path / "k" / ".source-"))
    assert prep_main(["subset", synthetic_set, "--per-class", "2", "--out", "s3://sets/k"]) == 2


def test_a_pipe_command_that_hangs_is_given_up_on_within_the_patience(synthetic_set):
    """A command that writes nothing (a stuck mount, a CLI waiting on a prompt) ends in one
    line, at the manifest or mid-shard, and leaves no process behind."""
    options = store.StoreOptions(patience=2)
    t0 = time.monotonic()
    with pytest.raises(DataSetError, match="did not finish in 2 s"):
        load_shard_set("pipe:sleep 60; cat {}", options=options)
    assert time.monotonic() - t0 < 6
    ss = load_shard_set(f"pipe:cat {synthetic_set}/{{}}", "val")
    path = os.path.join(synthetic_set, "val", ss.shards[0].name)
    slow = store.RemoteReader(f"pipe:head -c 1000 {path}; sleep 60", options,
                              size=ss.shards[0].bytes)
    t0 = time.monotonic()
    with pytest.raises(DataSetError, match="the store failed for 2 s"):
        slow.read()
    assert time.monotonic() - t0 < 6
    out = subprocess.run(["pgrep", "-f", "sleep 60"], capture_output=True, text=True).stdout
    assert not out.strip(), out
