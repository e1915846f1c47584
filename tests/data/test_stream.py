import json
import logging
import os

import numpy as np
import pytest
import torch
import webdataset as wds

from data.manifest import DataSetError, load_shard_set
from data.plan import Canon, Layout, PartitionOrders, buffer_order, plan_units
from data.stream import EvalStream, StreamConfig, TrainStream, _worker_batches


def cfg_for(path, **kw):
    base = dict(shards=path, batch_size=2, num_workers=0, num_frames=8, stride=2, size=32,
                patch=8, shuffle_buffer=4, seed=3)
    base.update(kw)
    return StreamConfig(**base)


@pytest.mark.parametrize("counts,total", [([5, 3, 8, 1], 2), ([5, 3, 8, 1], 4), ([7], 4),
                                          ([2, 2], 6), ([4] * 9, 3)])
def test_units_split_disjoint_and_complete_for_every_epoch(counts, total):
    units = plan_units(counts, total)
    assert len(units) >= total
    orders = PartitionOrders(units, total, 0, 8)
    for epoch in range(3):
        seen = []
        for w in range(total):
            assert orders.units_of(w, epoch)       # every partition reads something
            for u in orders.units_of(w, epoch):
                seen += [(u.shard, j) for j in range(u.part, counts[u.shard], u.parts)]
        assert sorted(seen) == [(s, j) for s, n in enumerate(counts) for j in range(n)]
    a = [u.shard for u in orders.units_of(0, 0)]
    b = [u.shard for u in PartitionOrders(units, total, 0, 8).units_of(0, 0)]
    assert a == b  # a function of (seed, epoch, partition), nothing else


def test_shuffle_buffer_order_is_a_seeded_permutation():
    o = buffer_order(100, 16, np.random.default_rng(0))
    assert sorted(o.tolist()) == list(range(100))
    assert o.tolist() != list(range(100))
    assert np.array_equal(o, buffer_order(100, 16, np.random.default_rng(0)))
    # a buffer of 16 never emits an item more than 16 places before it is read
    assert all(o[k] <= k + 16 for k in range(100))
    assert buffer_order(10, 1, np.random.default_rng(0)).tolist() == list(range(10))


def test_each_sample_once_per_epoch_across_ranks_and_workers(synthetic_set):
    """2 ranks x 2 workers, 1 sample per micro-batch: the four loader workers together take
    every sample of the set once before any partition's second epoch."""
    cfg = cfg_for(synthetic_set, batch_size=1, mask="none")
    ss = load_shard_set(synthetic_set)
    canon = Canon(ranks=2, workers=2, chunk=1, accum=1)
    layout = Layout(ranks=2, accum=1, batch=1, workers=2)
    orders = PartitionOrders(plan_units([s.samples for s in ss.shards], 4), 4, cfg.seed,
                             cfg.shuffle_buffer)
    shortest = min(orders.length(p, 0) for p in range(4))
    seen = []
    for rank in range(2):
        for worker in range(2):
            it = _worker_batches(cfg, ss, orders, canon, layout, rank, worker)
            seen += [int(next(it)["index"]) for _ in range(shortest)]
    assert len(seen) == len(set(seen)) == 4 * shortest
    # every partition's whole epoch, once: read on until each partition wraps
    whole = []
    for rank in range(2):
        for worker in range(2):
            p = rank * 2 + worker
            it = _worker_batches(cfg, ss, orders, canon, layout, rank, worker)
            whole += [int(next(it)["index"]) for _ in range(orders.length(p, 0))]
    assert sorted(whole) == list(range(ss.num_samples))


def test_batches_have_the_contract_shapes(synthetic_set):
    cfg = cfg_for(synthetic_set, batch_size=4, repeats=2, mask="tube", mask_ratio=0.75)
    b = next(iter(TrainStream(cfg)))
    assert b["video"].shape == (4, 3, 8, 32, 32) and b["video"].dtype == torch.uint8
    assert b["mask"].shape == (4, 4 * 4 * 4) and b["mask"].dtype == torch.bool
    assert b["mask"].sum(1).tolist() == [4 * 12] * 4
    assert b["label"].dtype == torch.int64
    # repeated sampling: the same video twice, with different crops/masks
    assert b["index"][0] == b["index"][1] and b["index"][2] == b["index"][3]
    assert not torch.equal(b["mask"][0], b["mask"][1])


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_yields_the_same_next_batches(synthetic_set, workers):
    cfg = cfg_for(synthetic_set, num_workers=workers, batch_size=4, repeats=2)
    straight = TrainStream(cfg)
    it = iter(straight)
    for _ in range(7):
        next(it)
    saved = json.loads(json.dumps(straight.state_dict()))  # as it would be checkpointed
    expected = [next(it) for _ in range(20)]   # runs past the end of an epoch (44 train clips)
    resumed = TrainStream(cfg)
    resumed.load_state_dict(saved)
    got = [b for _, b in zip(range(20), resumed)]
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert resumed.epoch >= 1.0


def test_epochs_reshuffle_and_runs_repeat(synthetic_set):
    cfg = cfg_for(synthetic_set, batch_size=1, mask="none")
    n = load_shard_set(synthetic_set).num_samples
    first = [int(b["index"]) for _, b in zip(range(2 * n), TrainStream(cfg))]
    again = [int(b["index"]) for _, b in zip(range(2 * n), TrainStream(cfg))]
    assert first == again
    assert sorted(first[:n]) == sorted(first[n:]) == list(range(n))
    assert first[:n] != first[n:]


def test_a_resume_that_changes_the_samples_per_step_is_refused(synthetic_set):
    from data.stream import LayoutError
    cfg = cfg_for(synthetic_set)
    s = TrainStream(cfg)
    next(iter(s))
    other = TrainStream(cfg, rank=0, world_size=2)   # 2 x 2 samples a step, not 2
    with pytest.raises(LayoutError, match="step holds 2 samples"):
        other.load_state_dict(s.state_dict())


@pytest.mark.parametrize("damage", ["payload", "label"])
def test_corrupt_sample_inside_a_shard_is_skipped_and_counted(tmp_path, synthetic_set, caplog,
                                                              damage):
    # copy one shard, replacing one video payload with garbage
    src = load_shard_set(synthetic_set, "val")
    out = tmp_path / "bad"
    os.makedirs(out)
    from data.shard_reader import numbered_samples
    samples = [raw for s, u in zip(src.shards, plan_units([s.samples for s in src.shards], 1))
               for _, raw in numbered_samples(s.url, u, set(range(u.count)))]
    with wds.TarWriter(str(out / "shard-000000.tar"), encoder=False) as w:
        for i, raw in enumerate(samples):
            raw = {k: v for k, v in raw.items() if not k.startswith("__url")}
            if i == 2 and damage == "payload":
                raw["mp4"] = raw["mp4"][:40]
            if i == 2 and damage == "label":  # a label the 4-class manifest does not have
                raw["cls"] = b"7"
                key = raw["__key__"]
            w.write(raw)
    manifest = {"format": "tubemae-shards", "version": 1, "kind": "video", "split": None,
                "classes": src.classes, "options": {},
                "shards": [{"name": "shard-000000.tar", "samples": len(samples),
                            "bytes": os.path.getsize(out / "shard-000000.tar"), "sha256": ""}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    cfg = cfg_for(str(out), batch_size=1, shuffle_buffer=1, mask="none")
    stream = TrainStream(cfg)
    with caplog.at_level(logging.WARNING):
        got = [int(b["index"]) for _, b in zip(range(len(samples)), stream)]
    # its slot takes the nearest usable sample before it, so every batch stays whole and the
    # run's batches do not depend on which process or worker met the damage
    assert got == [0, 1, 1] + list(range(3, len(samples)))
    assert stream.skipped == [1]
    assert any("corrupt sample" in r.message for r in caplog.records)
    if damage == "label":
        assert any(key in r.message and "shard-000000.tar" in r.message and
                   "label 7 is outside the 4 classes" in r.message for r in caplog.records)


def test_eval_stream_every_sample_once_across_ranks_with_views(synthetic_set):
    cfg = cfg_for(synthetic_set, batch_size=5, test_clips=2, test_crops=3, num_workers=2)
    n = load_shard_set(synthetic_set, "val").num_samples
    seen = []
    for rank in range(3):
        stream = EvalStream(cfg, "val", rank=rank, world_size=3)
        mine = []
        for b in stream:
            assert b["video"].shape[1:] == (3, 8, 32, 32)
            mine += list(zip(b["index"].tolist(), b["view"].tolist()))
        assert len(mine) == 6 * len(stream)
        seen += mine
    assert sorted(seen) == [(i, v) for i in range(n) for v in range(6)]


def test_volumes_stream_as_one_channel_clips(tmp_path):
    from data.prep.cli import main as prep
    from tests.conftest import make_medmnist_npz
    arrays = make_medmnist_npz(str(tmp_path / "synapsemnist3d.npz"), classes=2)
    assert prep(["medmnist", str(tmp_path / "synapsemnist3d.npz"), "--out",
                 str(tmp_path / "s")]) == 0
    cfg = cfg_for(str(tmp_path / "s"), num_frames=28, size=None, patch=4, tubelet=4,
                  shuffle_buffer=1, mask="tube", batch_size=3)
    b = next(iter(TrainStream(cfg)))
    assert b["video"].shape == (3, 1, 28, 28, 28)
    assert torch.equal(b["video"][0, 0], torch.from_numpy(arrays["train_images"][0]))
    assert b["mask"].shape == (3, 7 * 7 * 7)


def test_missing_or_unprepared_folders_say_what_to_do(tmp_path):
    with pytest.raises(DataSetError, match="does not exist"):
        load_shard_set(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataSetError, match="no manifest.json"):
        load_shard_set(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="multiple of data.repeats"):
        TrainStream(cfg_for(str(tmp_path), batch_size=3, repeats=2))


@pytest.mark.parametrize("repeats,flip", [(1, False), (2, True)])
def test_device_augmentation_makes_the_clips_of_the_cpu_path(synthetic_set, repeats, flip):
    from data.stream import batch_to_device
    kw = dict(batch_size=4, repeats=repeats, flip=flip, scales=(1.0, 0.875, 0.75, 0.66),
              decoder_mask_ratio=0.5)
    cpu = iter(TrainStream(cfg_for(synthetic_set, **kw)))
    dev = iter(TrainStream(cfg_for(synthetic_set, augment="device", **kw)))
    for _ in range(3):
        a, b = next(cpu), next(dev)
        assert "video" not in b and len(b["frames"]) == 4 // repeats
        b = batch_to_device(b, torch.device("cpu"), 32)
        assert set(a) == set(b)
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert differ == []


def test_device_augmentation_resumes_exactly(synthetic_set):
    cfg = cfg_for(synthetic_set, augment="device", repeats=2, batch_size=4)
    s = TrainStream(cfg)
    it = iter(s)
    for _ in range(3):
        next(it)
    state = s.state_dict()
    want = [next(it) for _ in range(3)]
    r = TrainStream(cfg)
    r.load_state_dict(state)
    got = [b for b, _ in zip(r, range(3))]
    for x, y in zip(want, got):
        assert all(torch.equal(u, v) for u, v in zip(x["frames"], y["frames"]))
        assert all(torch.equal(x[k], y[k]) for k in x if k != "frames")


@pytest.mark.parametrize("workers", [0, 2])
def test_nvdec_workers_make_the_clips_of_the_cpu_path(synthetic_set, monkeypatch, workers):
    """data.decode=nvdec with the CPU stand-in for NVDEC (decord's frames): the workers keep
    one decoder object, are spawned (CUDA cannot run in a forked child), and make the clips
    of the CPU path, bit for bit."""
    import data.nvdec as nvdec
    from data.stream import batch_to_device
    monkeypatch.setenv(nvdec.EMULATE, "1")
    kw = dict(batch_size=4, repeats=2, flip=True, decoder_mask_ratio=0.5, num_workers=workers)
    cpu = iter(TrainStream(cfg_for(synthetic_set, augment="device", **kw)))
    nv = iter(TrainStream(cfg_for(synthetic_set, augment="device", decode="nvdec", **kw)))
    for _ in range(3):
        a, b = next(cpu), next(nv)
        a, b = (batch_to_device(x, torch.device("cpu"), 32) for x in (a, b))
        assert [k for k in a if not torch.equal(a[k], b[k])] == []
    if workers == 0:
        assert nvdec._WORKER["decoder"].videos >= 6


class _FakeNvc:
    """PyNvVideoCodec's SimpleDecoder surface, decoding with decord; counts what it is asked."""

    class OutputColorType:
        RGB = "rgb"

    def __init__(self, refuse: bytes):
        self.calls, self.refuse = [], refuse
        fake = self

        class SimpleDecoder:
            def __init__(self, path, **kw):
                fake.calls.append("new")
                self.path = path

            def reconfigure_decoder(self, path):
                fake.calls.append("repoint")
                self.path = path

            def _data(self):
                with open(self.path, "rb") as f:
                    return f.read()

            def __len__(self):
                if self._data() == fake.refuse:
                    raise RuntimeError("unsupported profile")
                from data.decode import probe_video
                return probe_video(self._data()).num_frames

            def get_batch_frames_by_index(self, idx):
                from data.decode import decode_frames
                assert idx == sorted(set(idx))
                return list(torch.from_numpy(decode_frames(self._data(), idx)))
        self.SimpleDecoder = SimpleDecoder


def test_the_nvdec_decoder_is_kept_repointed_and_falls_back_to_the_cpu(monkeypatch, caplog):
    import sys
    from data.decode import decode_frames, encode_video
    from data.nvdec import NvdecDecoder
    rng = np.random.default_rng(0)
    videos = [encode_video(rng.integers(0, 255, (12, 32, 48, 3), dtype=np.uint8), fps=8)
              for _ in range(3)]
    fake = _FakeNvc(refuse=videos[1])
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", fake)
    dec = NvdecDecoder(0)
    pick = lambda n: np.array([n - 1, 0, 3, 3])  # noqa: E731  (any order, repeats)
    with caplog.at_level(logging.WARNING):
        got = [dec.frames(v, pick) for v in videos + videos[:1]]
    for v, g in zip(videos + videos[:1], got):
        assert np.array_equal(g, decode_frames(v, [11, 0, 3, 3]))
    # kept and re-pointed; the refused video went to the CPU and its decoder was replaced
    assert fake.calls == ["new", "repoint", "new", "repoint"]
    assert dec.cpu_fallbacks == 1 and "NVDEC refused a video" in caplog.text
    assert not os.path.exists(dec.path)  # the file it decodes from goes after each video


def test_nvdec_where_it_cannot_run_falls_back_to_the_cpu_with_one_warning(capsys):
    from data.nvdec import nvdec_unavailable, resolve_decode
    assert resolve_decode("cpu", torch.device("cpu")) == "cpu"
    assert "not a CUDA GPU" in nvdec_unavailable(torch.device("cpu"))
    assert resolve_decode("nvdec", torch.device("cpu")) == "cpu"
    err = capsys.readouterr().err
    assert "data.decode=nvdec" in err and "decoding on the CPU in the loader workers" in err
    with pytest.raises(ValueError, match="needs data.augment=device"):
        StreamConfig(shards="x", decode="nvdec").check()
    with pytest.raises(ValueError, match="data.decode must be cpu or nvdec"):
        StreamConfig(shards="x", decode="gpu").check()


def test_the_prefetcher_saves_the_position_of_the_last_consumed_batch(synthetic_set):
    from data.prefetch import Prefetcher
    cfg = cfg_for(synthetic_set, augment="device", repeats=2, batch_size=4, num_workers=2)
    plain = TrainStream(cfg)
    it = iter(plain)
    states = [plain.state_dict()]
    for _ in range(4):
        next(it)
        states.append(plain.state_dict())
    s = TrainStream(cfg)
    feed = Prefetcher(iter(s), s, lambda b: b, torch.device("cpu"), depth=2)
    assert feed.state_dict() == states[0]
    for k in range(1, 4):
        next(feed)
        assert feed.state_dict() == states[k]  # the thread is ahead; the saved place is not
    feed.close()


def test_spatial_repeats_share_frames_and_differ_in_crops_and_masks(synthetic_set):
    """data.repeat_mode=spatial (VideoMAE V2): a video's repeats take the same frame positions
    (one window decoded) with their own crops and masks; temporal repeats take their own
    windows. The CPU and device paths agree in spatial mode too, and it resumes exactly."""
    from data.stream import batch_to_device
    kw = dict(batch_size=8, repeats=4, scales=(1.0, 0.875, 0.75, 0.66), mask="tube",
              mask_ratio=0.75, flip=True)
    dev = next(iter(TrainStream(cfg_for(synthetic_set, augment="device",
                                        repeat_mode="spatial", **kw))))
    frames, crops = dev["clip_frames"], dev["clip_crop"]
    assert len(dev["frames"]) == 2 and all(f.shape[0] == 8 for f in dev["frames"])  # 8, not ~24
    for v in range(2):
        rows = slice(4 * v, 4 * v + 4)
        assert all(torch.equal(frames[rows][0], f) for f in frames[rows])
        assert len({tuple(c.tolist()) for c in crops[rows]}) > 1
        assert len({tuple(m.tolist()) for m in dev["mask"][rows]}) == 4
    temporal = next(iter(TrainStream(cfg_for(synthetic_set, augment="device", **kw))))
    assert sum(f.shape[0] for f in temporal["frames"]) > 16       # the union of 4 windows
    cpu = next(iter(TrainStream(cfg_for(synthetic_set, repeat_mode="spatial", **kw))))
    on_dev = batch_to_device(dev, torch.device("cpu"), 32)
    assert [k for k in cpu if not torch.equal(cpu[k], on_dev[k])] == []
    s = TrainStream(cfg_for(synthetic_set, repeat_mode="spatial", **kw))
    it = iter(s)
    next(it)
    state = s.state_dict()
    want = next(it)
    r = TrainStream(cfg_for(synthetic_set, repeat_mode="spatial", **kw))
    r.load_state_dict(state)
    got = next(iter(r))
    assert all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(ValueError, match="data.repeat_mode must be temporal or spatial"):
        TrainStream(cfg_for(synthetic_set, repeat_mode="both"))


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_yuv_planes_to_the_device_make_the_rgb_paths_clips_within_a_level(synthetic_set, mode):
    """data.device_format=yuv420: the workers ship the decoder's I420 planes (half the bytes of
    RGB) and the device converts each crop with the stream's matrix and range; the clips are
    the RGB path's within 1 level of 255 on average (max stated), with the same positions,
    crops and masks, and the stream resumes exactly."""
    from data.stream import batch_to_device
    kw = dict(batch_size=8, repeats=4, repeat_mode=mode, augment="device", flip=True,
              scales=(1.0, 0.875, 0.75, 0.66), mask="tube", mask_ratio=0.75)
    rgb = iter(TrainStream(cfg_for(synthetic_set, **kw)))
    yuv_stream = TrainStream(cfg_for(synthetic_set, device_format="yuv420", **kw))
    yuv = iter(yuv_stream)
    diffs = []
    for _ in range(3):
        a, b = next(rgb), next(yuv)
        assert sum(f.numel() for f in b["frames"]) * 2 == sum(f.numel() for f in a["frames"])
        assert b["frame_colour"].tolist() == [[0, 0]] * len(b["frames"])  # BT.601, limited
        for k in ("clip_frames", "clip_crop", "clip_source", "mask"):
            assert torch.equal(a[k], b[k])
        va = batch_to_device(a, torch.device("cpu"), 32)["video"].float()
        vb = batch_to_device(b, torch.device("cpu"), 32)["video"].float()
        diffs.append((va - vb).abs())
    d = torch.cat([x.flatten() for x in diffs])
    print(f"yuv420 vs rgb ({mode}): mean {d.mean():.3f}, max {d.max():.0f} levels")
    assert d.mean() < 1.0 and d.max() <= 3          # measured 0.61 and 2
    state = yuv_stream.state_dict()
    want = next(yuv)
    again = TrainStream(cfg_for(synthetic_set, device_format="yuv420", **kw))
    again.load_state_dict(state)
    got = next(iter(again))
    assert all(torch.equal(x, y) for x, y in zip(want["frames"], got["frames"]))
    assert all(torch.equal(want[k], got[k]) for k in want if k != "frames")
    with pytest.raises(ValueError, match="device_format=yuv420 ships the CPU decoder"):
        TrainStream(cfg_for(synthetic_set, device_format="yuv420"))


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_keyframe_starts_decode_no_frame_before_the_clip_and_resume(keyframe_set, monkeypatch,
                                                                    mode):
    """data.clip_starts=keyframe: every training clip starts on a keyframe (a multiple of the
    prep's --gop), the starts still spread over the video, the CPU and device paths agree and
    the stream resumes exactly."""
    import data.clips as clips_module
    from data.stream import batch_to_device
    real, firsts = clips_module.decode_frames, []

    def recording(data, indices=None, num_threads=1):
        def pick(n):
            idx = np.asarray(indices(n))
            firsts.append(int(idx.min()))
            return idx
        return real(data, pick, num_threads)
    monkeypatch.setattr(clips_module, "decode_frames", recording)
    kw = dict(batch_size=4, repeats=2, repeat_mode=mode, num_frames=4, stride=1,
              clip_starts="keyframe", shuffle_buffer=8)
    it = iter(TrainStream(cfg_for(keyframe_set, **kw)))
    for _ in range(8):
        next(it)
    assert firsts and all(f % 4 == 0 for f in firsts)
    assert len(set(firsts)) >= 5                         # 0, 4, ..., 36 are possible
    firsts.clear()
    it = iter(TrainStream(cfg_for(keyframe_set, **{**kw, "clip_starts": "any"})))
    for _ in range(8):
        next(it)
    assert any(f % 4 for f in firsts)                    # any start, as before
    cpu = next(iter(TrainStream(cfg_for(keyframe_set, **kw))))
    dev = next(iter(TrainStream(cfg_for(keyframe_set, augment="device", **kw))))
    on_dev = batch_to_device(dev, torch.device("cpu"), 32)
    assert [k for k in cpu if not torch.equal(cpu[k], on_dev[k])] == []
    s = TrainStream(cfg_for(keyframe_set, **kw))
    it = iter(s)
    next(it)
    state = s.state_dict()
    want = next(it)
    r = TrainStream(cfg_for(keyframe_set, **kw))
    r.load_state_dict(state)
    got = next(iter(r))
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_keyframe_starts_on_videos_stored_as_they_came_are_refused(synthetic_set):
    """The synthetic set's videos were not transcoded by prep: their keyframes are not known,
    and the stream says what to do instead of sampling another distribution."""
    with pytest.raises(ValueError, match="clip_starts=keyframe needs shards whose keyframes"):
        next(iter(TrainStream(cfg_for(synthetic_set, clip_starts="keyframe"))))
    with pytest.raises(ValueError, match="data.clip_starts must be any or keyframe"):
        TrainStream(cfg_for(synthetic_set, clip_starts="gop"))


def test_keyframe_sampling_is_uniform_over_the_starts_that_fit():
    from data.sampling import sample_frame_indices
    rng = np.random.default_rng(0)
    starts = [int(sample_frame_indices(40, 4, 2, rng, start_every=8)[0]) for _ in range(2000)]
    assert set(starts) == {0, 8, 16, 24, 32}             # 32 + 7 = 39 still fits 40 frames
    counts = np.bincount(starts)[::8]
    assert counts.min() > 0.8 * counts.max()
    a = [sample_frame_indices(40, 4, 2, np.random.default_rng(s)).tolist() for s in range(5)]
    b = [sample_frame_indices(40, 4, 2, np.random.default_rng(s), start_every=1).tolist()
         for s in range(5)]
    assert a == b                                        # every start: the draws of before


def _global_steps(cfg, world, accum, workers, steps, state=None):
    """The run's steps as ``world`` ranks read them: per step, every tensor of its
    micro-batches concatenated in slot order (micro-batch i of rank r holds the slots after
    those of (i, r-1)), and the stream state after them."""
    from dataclasses import replace
    streams = [TrainStream(replace(cfg, num_workers=workers), rank=r, world_size=world,
                           accum=accum) for r in range(world)]
    if state is not None:
        for s in streams:
            s.load_state_dict(state)
    its = [iter(s) for s in streams]
    out = []
    for _ in range(steps):
        parts = [next(its[r]) for _ in range(accum) for r in range(world)]
        out.append({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    for it in its:
        it.close()
    return out, json.loads(json.dumps(streams[0].state_dict()))


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [
    ((2, 1, 2, 2), (1, 1, 4, 0)),      # 2 -> 1 process: the process batch doubles
    ((1, 1, 6, 2), (3, 1, 2, 0)),      # 1 -> 3: a third of it each
    ((2, 1, 4, 0), (4, 1, 2, 2)),      # 2 -> 4, and loader workers 1 -> 2
    ((2, 1, 3, 2), (1, 2, 3, 0)),      # 2 -> 1 keeping the process batch: accumulation 2
    ((2, 2, 3, 2), (3, 1, 4, 0))])     # accumulation 2 -> 1 on 3 processes; workers 2 -> 1
def test_a_run_continued_on_another_layout_reads_the_same_steps(synthetic_set, before, after):
    """(processes, accumulation, process batch, loader workers): the same samples per step
    before and after. The steps after the change are the uninterrupted run's, tensor for tensor
    (clips, masks, labels, sample numbers), across an epoch's end; so every remaining sample of
    the epoch comes once, none repeated, none skipped."""
    cfg = cfg_for(synthetic_set, mask="tube", mask_ratio=0.75)
    (w0, a0, b0, n0), (w1, a1, b1, n1) = before, after
    from dataclasses import replace
    straight, _ = _global_steps(replace(cfg, batch_size=b0), w0, a0, n0, 16)
    first, state = _global_steps(replace(cfg, batch_size=b0), w0, a0, n0, 4)
    rest, _ = _global_steps(replace(cfg, batch_size=b1), w1, a1, n1, 12, state)
    for t, (a, b) in enumerate(zip(straight, first + rest)):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (t, k)
    # each partition's first epoch (the partitions are the first layout's loader workers) is
    # its samples once each, and together they are the set's
    seen = torch.cat([s["index"] for s in first + rest]).tolist()
    canon = TrainStream(replace(cfg, batch_size=b0, num_workers=n0), world_size=w0,
                        accum=a0).canon
    parts, ks = canon.locate(np.arange(len(seen)))
    stream = TrainStream(replace(cfg, batch_size=b0, num_workers=n0), world_size=w0, accum=a0)
    epoch0 = []
    for p in range(canon.partitions):
        n = stream.orders.length(p, 0)
        mine = [x for x, pp, k in zip(seen, parts, ks) if pp == p and k < n]
        assert len(mine) == len(set(mine)) == n
        epoch0 += mine
    assert sorted(epoch0) == list(range(stream.shard_set.num_samples))


def test_a_layout_that_cannot_hold_the_step_is_named(synthetic_set):
    from data.stream import LayoutError
    cfg = cfg_for(synthetic_set, batch_size=4)
    _, state = _global_steps(cfg, 2, 1, 0, 1)
    with pytest.raises(LayoutError, match="step holds 8 samples"):
        TrainStream(cfg, rank=0, world_size=3).load_state_dict(state)


def test_more_partitions_than_samples_is_one_line(synthetic_set):
    with pytest.raises(DataSetError, match="holds 45 samples, too few to give each of the "
                                           "run's 64 partitions"):
        TrainStream(cfg_for(synthetic_set), rank=0, world_size=64)
