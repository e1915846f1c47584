import hashlib
import json
import os

import numpy as np
import pytest

from data.decode import decode_frames, encode_video, probe_video
from data.manifest import DataSetError, load_shard_set
from data.prep import runner
from data.prep.cli import main as prep
from data.prep.medmnist import CLASSES as MED_CLASSES
from data.plan import plan_units
from data.shard_reader import decode_sample, numbered_samples
from data.stream import StreamConfig
from tests.conftest import make_medmnist_npz, moving_frames, write_video


def shard_digests(folder):
    out = {}
    for d, _, files in os.walk(folder):
        for f in sorted(files):
            if f.endswith(".tar"):
                with open(os.path.join(d, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(d, f), folder)] = \
                        hashlib.sha256(fh.read()).hexdigest()
    return out


def read_all(shard_dir):
    ss = load_shard_set(shard_dir)
    samples = []
    for s, unit in zip(ss.shards, plan_units([s.samples for s in ss.shards], 1)):
        samples += [raw for _, raw in numbered_samples(s.url, unit, set(range(unit.count)))]
    return ss, samples


def failures(folder):
    with open(os.path.join(folder, "failures.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_synthetic_is_identical_for_the_same_seed_and_any_worker_count(tmp_path, synthetic_set):
    args = ["synthetic", "--count", "64", "--num-classes", "4", "--size", "32", "--frames",
            "24", "--shard-samples", "8"]
    assert prep(args + ["--out", str(tmp_path / "b"), "--workers", "2"]) == 0
    assert shard_digests(synthetic_set) == shard_digests(tmp_path / "b")
    other = ["synthetic", "--count", "64", "--num-classes", "4", "--size", "32", "--frames",
             "24", "--shard-samples", "8", "--seed", "1", "--workers", "0"]
    assert prep(other + ["--out", str(tmp_path / "c")]) == 0
    assert shard_digests(synthetic_set) != shard_digests(tmp_path / "c")


def test_synthetic_splits_manifest_and_content(synthetic_set):
    total = 0
    for split in ("train", "val", "test"):
        ss, samples = read_all(os.path.join(synthetic_set, split))
        assert ss.kind == "video" and ss.split == split
        assert ss.classes == ["right-slow", "right-fast", "left-slow", "left-fast"]
        assert len(samples) == ss.num_samples
        total += ss.num_samples
        meta = json.loads(samples[0]["json"])
        assert set(meta) >= {"label", "label_name", "source", "num_frames", "fps", "width",
                             "height"}
        kind, payload, label = decode_sample(samples[0])
        assert decode_frames(payload).shape == (24, 32, 32, 3) and label == meta["label"]
    assert total == 64


def test_synthetic_class_is_motion_not_appearance():
    from data.prep.synthetic import render_clip
    rng = np.random.default_rng(0)
    right = render_clip(0, rng, 64, 8).astype(int)   # right-slow
    # the shape moves: consecutive frames differ; the background does not move
    assert np.abs(right[1] - right[0]).sum() > 0
    # first-frame statistics do not separate classes (shape/colour drawn independently)
    means = {c: np.mean([render_clip(c, np.random.default_rng(s), 32, 1).mean()
                         for s in range(30)]) for c in range(4)}
    assert max(means.values()) - min(means.values()) < 10


def test_a_moving_background_moves_everywhere_and_says_nothing_about_the_class(tmp_path):
    """--background moving: plane waves and the whole background drift, so almost every pixel
    changes from frame to frame (flat: only the shape's pixels); the drift is drawn apart from
    the class; the flat set's clips are unchanged; the manifest records it."""
    from data.prep.synthetic import MOVING, NONE, render_clip
    flat = render_clip(0, np.random.default_rng(3), 64, 4, NONE).astype(int)
    again = render_clip(0, np.random.default_rng(3), 64, 4).astype(int)
    moving = render_clip(0, np.random.default_rng(3), 64, 4, MOVING).astype(int)
    assert np.array_equal(flat, again)
    changed = lambda c: (np.abs(c[1] - c[0]).sum(-1) > 0).mean()        # noqa: E731
    assert changed(flat) < 0.1 and changed(moving) > 0.8
    # mean frame-to-frame motion energy of the background alike for every class
    energy = {c: np.mean([np.abs(np.diff(render_clip(c, np.random.default_rng(s), 32, 3,
                                                     MOVING).astype(float), axis=0)).mean()
                          for s in range(20)]) for c in range(4)}
    assert max(energy.values()) < 1.5 * min(energy.values())
    out = tmp_path / "m"
    assert prep(["synthetic", "--out", str(out), "--count", "8", "--num-classes", "2",
                 "--size", "32", "--frames", "8", "--background", "moving",
                 "--workers", "0"]) == 0
    assert load_shard_set(str(out / "train")).options["background"] == "moving"


def make_tree(root):
    """root/<class>/ with h264 mp4, vp9 webm, av1 mkv, plus bad inputs."""
    for c in ("cats", "dogs"):
        os.makedirs(root / c)
    write_video(str(root / "cats" / "a.mp4"), 30, "h264", seed=1)
    write_video(str(root / "cats" / "b.webm"), 30, "vp9", seed=2)
    write_video(str(root / "dogs" / "c.mkv"), 30, "av1", seed=3)
    write_video(str(root / "dogs" / "d.avi"), 30, "h264", seed=4)
    (root / "dogs" / "empty.mp4").write_bytes(b"")
    (root / "dogs" / "notes.mp4").write_text("this is not a video\n")
    (root / "cats" / "readme.txt").write_text("hello")
    good = (root / "cats" / "a.mp4").read_bytes()
    (root / "cats" / "cut.mp4").write_bytes(good[: len(good) // 2])


def test_videos_from_a_tree_with_every_codec_and_corrupt_inputs_reported(tmp_path):
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    assert prep(["videos", str(tmp_path / "in"), "--out", str(out), "--workers", "2"]) == 0
    ss, samples = read_all(str(out))
    assert ss.classes == ["cats", "dogs"]
    names = sorted(os.path.basename(json.loads(s["json"])["source"]) for s in samples)
    assert names == ["a.mp4", "b.webm", "c.mkv", "d.avi"]
    exts = {k for s in samples for k in s if k in ("mp4", "webm", "mkv", "avi")}
    assert exts == {"mp4", "webm", "mkv", "avi"}
    fails = {os.path.basename(f["source"]): f["reason"] for f in failures(str(out))}
    assert set(fails) == {"empty.mp4", "notes.mp4", "readme.txt", "cut.mp4"}
    assert "empty" in fails["empty.mp4"]
    assert "not a video file" in fails["readme.txt"]
    assert "cannot" in fails["notes.mp4"] and "cannot" in fails["cut.mp4"]
    with open(out / "manifest.json") as f:
        m = json.load(f)
    assert m["num_samples"] == 4 and m["num_failures"] == 4


def test_prep_then_stream_gives_the_frames_of_the_source_file(tmp_path):
    os.makedirs(tmp_path / "in" / "only")
    src = write_video(str(tmp_path / "in" / "only" / "v.mp4"), 31, "h264", h=32, w=32)
    out = tmp_path / "out"
    assert prep(["videos", str(tmp_path / "in"), "--out", str(out), "--workers", "0"]) == 0
    from data.stream import TrainStream
    # 31 frames = the exact span of 16 frames at stride 2: the start is 0, crop = whole frame
    cfg = StreamConfig(shards=str(out), batch_size=1, num_workers=0, num_frames=16, stride=2,
                       size=32, scales=(1.0,), mask="none", shuffle_buffer=1)
    clip = next(iter(TrainStream(cfg)))["video"][0]                 # (C, T, H, W)
    with open(src, "rb") as f:
        direct = decode_frames(f.read(), range(0, 31, 2))          # (T, H, W, C)
    assert np.array_equal(clip.permute(1, 2, 3, 0).numpy(), direct)


def test_list_and_kinetics_csv_inputs_with_missing_files(tmp_path):
    vids = tmp_path / "videos"
    os.makedirs(vids)
    write_video(str(vids / "abc_000010_000020.mp4"), 20, seed=1)
    write_video(str(vids / "xyz_000000_000010.mp4"), 20, seed=2)
    write_video(str(vids / "qqq.mp4"), 20, seed=3)
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "jumping,abc,10,20,train\n\"riding, horse\",xyz,0,10,validate\n"
                   "jumping,qqq,5,15,train\njumping,gone,0,10,train\n")
    assert prep(["videos", str(csv), "--root", str(vids), "--out", str(tmp_path / "k"),
                 "--workers", "0"]) == 0
    tr, tr_samples = read_all(str(tmp_path / "k" / "train"))
    va, va_samples = read_all(str(tmp_path / "k" / "val"))
    assert tr.classes == ["jumping", "riding, horse"] == va.classes
    assert tr.num_samples == 2 and va.num_samples == 1
    assert json.loads(va_samples[0]["json"])["label_name"] == "riding, horse"
    assert [f["reason"] for f in failures(str(tmp_path / "k" / "train"))] == ["file not found"]

    (tmp_path / "train.txt").write_text("abc_000010_000020.mp4 0\nqqq.mp4 1\n")
    (tmp_path / "val.txt").write_text("xyz_000000_000010.mp4 1\nmissing.mp4 0\n")
    (tmp_path / "names.txt").write_text("zero\none\n")
    assert prep(["videos", f"train={tmp_path / 'train.txt'}", f"val={tmp_path / 'val.txt'}",
                 "--root", str(vids), "--classes", str(tmp_path / "names.txt"),
                 "--out", str(tmp_path / "l"), "--workers", "0", "--no-shuffle"]) == 0
    tr, tr_samples = read_all(str(tmp_path / "l" / "train"))
    assert [json.loads(s["json"])["label_name"] for s in tr_samples] == ["zero", "one"]
    assert len(failures(str(tmp_path / "l" / "val"))) == 1


def test_transcode_shrinks_to_the_short_side_with_short_gop(tmp_path):
    os.makedirs(tmp_path / "in" / "c")
    write_video(str(tmp_path / "in" / "c" / "big.webm"), 24, "vp9", h=96, w=128)
    out = tmp_path / "out"
    assert prep(["videos", str(tmp_path / "in"), "--out", str(out), "--short-side", "48",
                 "--gop", "4", "--workers", "0"]) == 0
    ss, samples = read_all(str(out))
    meta = json.loads(samples[0]["json"])
    assert (meta["height"], meta["width"], meta["num_frames"]) == (48, 64, 24)
    assert "mp4" in samples[0] and ss.options["short_side"] == 48
    import av, io
    with av.open(io.BytesIO(samples[0]["mp4"])) as c:
        keys = [p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size]
    assert sum(keys) == 6  # a keyframe every 4 frames


def test_transcoding_encodes_for_fast_decoding_unless_told_not_to(tmp_path):
    """prep's default: x264 --tune fastdecode (no CABAC, no deblocking filter; x264 writes its
    settings into the stream), recorded in the manifest; --no-fast-decode keeps x264's
    defaults. Both show the same picture within a few levels."""
    os.makedirs(tmp_path / "in" / "c")
    write_video(str(tmp_path / "in" / "c" / "v.mp4"), 24, h=96, w=128)
    got = {}
    for flag in ("--fast-decode", "--no-fast-decode"):
        out = tmp_path / flag
        assert prep(["videos", str(tmp_path / "in"), "--out", str(out), "--short-side", "48",
                     "--workers", "0", flag] + (["--gop", "4"] if flag == "--fast-decode"
                                                else [])) == 0
        ss, samples = read_all(str(out))
        got[flag] = (ss.options, samples[0]["mp4"])
    fast_opts, fast = got["--fast-decode"]
    slow_opts, slow = got["--no-fast-decode"]
    assert fast_opts["tune"] == "fastdecode" and "tune" not in slow_opts
    assert b"cabac=0" in fast and b"deblock=0" in fast
    assert b"cabac=1" in slow and b"deblock=1" in slow
    a = decode_frames(fast).astype(np.float32)
    b = decode_frames(slow).astype(np.float32)
    assert a.shape == b.shape and np.abs(a - b).mean() < 3.0
    # an earlier set (made without it) is not resumed with the new encoding
    assert prep(["videos", str(tmp_path / "in"), "--out", str(tmp_path / "--no-fast-decode"),
                 "--short-side", "48", "--workers", "0"]) != 0


def test_interrupted_prep_resumes_to_the_same_shards(tmp_path, monkeypatch):
    make_tree(tmp_path / "in")
    for i in range(6):
        write_video(str(tmp_path / "in" / "cats" / f"extra{i}.mp4"), 12, seed=10 + i)
    args = ["videos", str(tmp_path / "in"), "--shard-samples", "2", "--workers", "0"]
    assert prep(args + ["--out", str(tmp_path / "whole")]) == 0

    from data.prep import videos
    real, calls = videos.process_video, {"n": 0}

    def dies_after_seven(*a, **k):
        calls["n"] += 1
        if calls["n"] > 7:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(videos, "process_video", dies_after_seven)
    assert prep(args + ["--out", str(tmp_path / "cut")]) == 130
    assert not (tmp_path / "cut" / "manifest.json").exists()
    with pytest.raises(DataSetError, match="re-run the same prep command"):
        load_shard_set(str(tmp_path / "cut"))
    # a torn journal line and a stray partial shard, as a kill -9 would leave them
    with open(tmp_path / "cut" / ".progress.jsonl", "a") as f:
        f.write('{"name": "shard-0000')
    (tmp_path / "cut" / "shard-000009.tar.tmp").write_bytes(b"partial")
    monkeypatch.setattr(videos, "process_video", real)
    assert prep(args + ["--out", str(tmp_path / "cut")]) == 0
    assert shard_digests(tmp_path / "whole") == shard_digests(tmp_path / "cut")
    assert failures(str(tmp_path / "whole")) == failures(str(tmp_path / "cut"))
    # finished sets are left alone; a different option set is refused
    assert prep(args + ["--out", str(tmp_path / "cut")]) == 0
    assert prep(args[:-4] + ["--shard-samples", "3", "--workers", "0", "--out",
                             str(tmp_path / "cut")]) == 2


def _dies_on_three(i):
    if i == 3:
        os._exit(9)  # the process dies as a crashing decoder would
    return {"ok": True, "sample": i}


def test_a_decoder_crash_costs_only_its_input():
    out = list(runner.ordered_map(_dies_on_three, list(range(8)), workers=2))
    assert [r.get("sample") for r in out] == [0, 1, 2, None, 4, 5, 6, 7]
    assert "crashed" in out[3]["reason"]


def test_medmnist_round_trip_and_missing_file_message(tmp_path):
    arrays = make_medmnist_npz(str(tmp_path / "organmnist3d.npz"))
    out = tmp_path / "organ"
    assert prep(["medmnist", "organmnist3d", "--root", str(tmp_path), "--out", str(out)]) == 0
    for split in ("train", "val", "test"):
        ss, samples = read_all(str(out / split))
        assert ss.kind == "volume" and ss.classes == MED_CLASSES["organmnist3d"]
        assert len(samples) == len(arrays[f"{split}_images"])
        for i, s in enumerate(samples):
            kind, vol, label = decode_sample(s)
            assert kind == "volume" and vol.dtype == np.uint8
            assert np.array_equal(vol, arrays[f"{split}_images"][i])
            assert label == int(arrays[f"{split}_labels"][i, 0])

    with pytest.raises(FileNotFoundError) as e:
        from data.prep.medmnist import locate
        locate("nodulemnist3d", 64, str(tmp_path))
    msg = str(e.value)
    assert "nodulemnist3d_64.npz" in msg and "zenodo.org/records/10519652" in msg
    assert prep(["medmnist", "nodulemnist3d", "--root", str(tmp_path), "--out",
                 str(tmp_path / "x")]) == 2


def test_medmnist_download_from_a_local_address(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    make_medmnist_npz(str(src / "nodulemnist3d_64.npz"), side=8, classes=2)
    root = tmp_path / "cache"
    assert prep(["medmnist", "nodulemnist3d", "--size", "64", "--root", str(root), "--download",
                 "--url", (src / "nodulemnist3d_64.npz").as_uri(), "--out",
                 str(tmp_path / "n")]) == 0
    assert (root / "nodulemnist3d_64.npz").exists()
    ss = load_shard_set(str(tmp_path / "n"), "val")
    assert ss.num_samples == 3 and ss.options["size"] == 64


def test_probe_rejects_what_cannot_be_decoded():
    good = encode_video(moving_frames(10), 25.0)
    assert probe_video(good).num_frames == 10
    from data.decode import VideoDecodeError
    for bad in (b"", b"not a video at all" * 20, good[: len(good) // 3]):
        with pytest.raises(VideoDecodeError):
            probe_video(bad)


def test_frame_step_keeps_every_kth_frame_and_the_stream_strides_in_source_frames(tmp_path):
    from data.stream import TrainStream
    os.makedirs(tmp_path / "in" / "c")
    src = write_video(str(tmp_path / "in" / "c" / "v.mp4"), 60, "h264", h=48, w=48)
    out = tmp_path / "out"
    assert prep(["videos", str(tmp_path / "in"), "--out", str(out), "--frame-step", "3",
                 "--workers", "0"]) == 0
    ss, samples = read_all(str(out))
    meta = json.loads(samples[0]["json"])
    assert ss.options["frame_step"] == 3 and meta["frame_step"] == 3
    assert meta["num_frames"] == 20
    with open(src, "rb") as f:
        source = decode_frames(f.read()).astype(np.float32)           # (60, H, W, C)

    def source_frame(frame):  # the source frame a (lossy) stored frame shows
        return int(np.argmin(((source - frame.astype(np.float32)) ** 2).mean((1, 2, 3))))
    stored = decode_frames(samples[0]["mp4"])
    assert [source_frame(f) for f in stored] == list(range(0, 60, 3))
    # stride 6 source frames = every 2nd stored frame: the clip spans the same time
    cfg = StreamConfig(shards=str(out), batch_size=1, num_workers=0, num_frames=8, stride=6,
                       size=48, scales=(1.0,), mask="none", shuffle_buffer=1)
    clip = next(iter(TrainStream(cfg)))["video"][0].permute(1, 2, 3, 0).numpy()
    shown = [source_frame(f) for f in clip]
    assert np.all(np.diff(shown) == 6) and shown[0] % 3 == 0
    with pytest.raises(ValueError, match="data.stride=4 is not a multiple of the frame step 3"):
        next(iter(TrainStream(StreamConfig(shards=str(out), batch_size=1, num_workers=0,
                                           num_frames=8, stride=4, size=48, mask="none"))))


def test_verify_rebuilds_a_damaged_shard_byte_for_byte_and_streams_skip_it(tmp_path, caplog):
    from data.shard_reader import _VERIFIED
    from data.stream import TrainStream
    out = str(tmp_path / "set")
    args = ["synthetic", "--out", out, "--count", "24", "--size", "32", "--frames", "8",
            "--shard-samples", "4", "--workers", "0"]
    assert prep(args) == 0
    shard = os.path.join(out, "train", "shard-000001.tar")
    good = open(shard, "rb").read()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF               # same size, other bytes
    open(shard, "wb").write(damaged)
    # the stream checks the sha256: the damaged shard's samples are skipped and counted
    _VERIFIED.clear()
    cfg = StreamConfig(shards=out, batch_size=1, num_workers=0, num_frames=4, stride=1, size=32,
                       patch=8, mask="none", shuffle_buffer=1)
    stream = TrainStream(cfg)
    n = load_shard_set(out).num_samples
    with caplog.at_level("WARNING"):
        got = [int(b["index"]) for _, b in zip(range(n), stream)]
    # the damaged shard's slots take the nearest usable sample before them
    assert got == [0, 1, 2, 3, 3, 3, 3, 3] + list(range(8, n)) and sum(stream.skipped) == 4
    assert any("does not match the sha256" in r.message for r in caplog.records)
    _VERIFIED.clear()
    with pytest.raises(DataSetError, match="shard-000001.tar does not match the sha256"):
        list(zip(range(n), TrainStream(StreamConfig(**{**cfg.__dict__, "strict": True}))))
    # the same prep command is "already complete"; with --verify it rebuilds the shard
    assert prep(args) == 0 and open(shard, "rb").read() == bytes(damaged)
    assert prep(args + ["--verify"]) == 0
    assert open(shard, "rb").read() == good
    _VERIFIED.clear()


def test_damaged_manifests_and_empty_sets_say_what_is_wrong(tmp_path):
    os.makedirs(tmp_path / "in" / "c")
    (tmp_path / "in" / "c" / "empty.mp4").write_bytes(b"")
    assert prep(["videos", str(tmp_path / "in"), "--out", str(tmp_path / "none"),
                 "--workers", "0"]) == 2
    bad = tmp_path / "bad"
    os.makedirs(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(DataSetError, match="manifest.json is not valid JSON"):
        load_shard_set(str(bad))
    (bad / "manifest.json").write_text(json.dumps({"format": "tubemae-shards", "version": 1,
                                                   "kind": "video", "shards": [{"name": "x"}]}))
    with pytest.raises(DataSetError, match="lacks classes, shards.0..samples"):
        load_shard_set(str(bad))


def test_kinetics_rows_trim_whole_videos_to_their_window(tmp_path):
    import numpy as np
    from data.decode import decode_frames, encode_video
    vids = tmp_path / "videos"
    os.makedirs(vids)
    # a whole 10 s video at 10 fps whose frame i is grey level 2 * i
    frames = np.repeat(np.arange(100, dtype=np.uint8)[:, None, None, None] * 2, 32, 1)
    frames = np.repeat(np.repeat(frames, 32, 2), 3, 3)
    (vids / "whole.mp4").write_bytes(encode_video(frames, fps=10.0, codec="h264", crf=0))
    write_video(str(vids / "cut_000002_000004.mp4"), 20, seed=1)     # already cut: untouched
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "a,whole,3,6,train\nb,cut,2,4,train\nc,whole,0,100,val\n")
    assert prep(["videos", str(csv), "--root", str(vids), "--out", str(tmp_path / "k"),
                 "--workers", "0", "--no-shuffle"]) == 0
    _, samples = read_all(str(tmp_path / "k" / "train"))
    meta = [json.loads(s["json"]) for s in samples]
    trimmed = next(i for i, m in enumerate(meta) if m["label_name"] == "a")
    assert meta[trimmed]["window"] == [3.0, 6.0] and meta[trimmed]["num_frames"] == 30
    first = decode_frames(samples[trimmed]["mp4"], [0, 29])
    assert abs(float(first[0].mean()) - 60) < 3 and abs(float(first[1].mean()) - 118) < 3
    cut = next(m for m in meta if m["label_name"] == "b")
    assert "window" not in cut and cut["num_frames"] == 20
    _, val = read_all(str(tmp_path / "k" / "val"))      # a window longer than the file: kept
    assert "window" not in json.loads(val[0]["json"])


def test_a_really_full_disk_in_prep_is_one_line_and_leaves_no_partial_shard(small_fs, capsys):
    rc = prep(["synthetic", "--out", str(small_fs / "set"), "--count", "200", "--size", "64",
               "--frames", "40", "--workers", "0"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"data.prep: error: could not write under {small_fs / 'set'} (No "
                          f"space left on device;") and "finished shards are kept" in err
    assert not list(small_fs.rglob("*.tmp"))


def test_a_read_only_out_in_prep_is_one_line(tmp_path, capsys):
    """A read-only filesystem (refused even to root)."""
    from tests.conftest import tmpfs
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        rc = prep(["synthetic", "--out", str(ro / "set"), "--count", "8", "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"data.prep: error: could not write under {ro / 'set'} "
                             f"(Read-only file system;")


def test_two_preps_into_one_out_the_second_says_the_folder_is_in_use(tmp_path, capsys):
    import sys
    from data.atomic import FolderLock
    out = tmp_path / "set"
    out.mkdir()
    import subprocess
    hold = ("import sys, time; sys.path.insert(0, '.'); from data.atomic import FolderLock; "
            "held = FolderLock(sys.argv[1]); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = prep(["synthetic", "--out", str(out), "--count", "8", "--workers", "0"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1
        assert err[0].startswith(f"data.prep: error: {out} is in use by pid {holder.pid} on ")
        assert err[0].endswith("wait for it to finish, or choose another --out")
    finally:
        holder.kill()
        holder.wait()
    assert prep(["synthetic", "--out", str(out), "--count", "8", "--workers", "0"]) == 0
    FolderLock(str(out)).release()      # released at the end of the prep


def test_medmnist_download_without_a_network_is_one_line(tmp_path, capsys):
    rc = prep(["medmnist", "organmnist3d", "--root", str(tmp_path / "npz"), "--download",
               "--url", "http://127.0.0.1:9/organmnist3d.npz", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("data.prep: error: could not download http://127.0.0.1:9/")
    assert "put it into" in err[0] and not list((tmp_path / "npz").glob("*.part"))


def test_a_tree_lists_every_entry_that_is_not_a_usable_video_in_failures(tmp_path):
    """Links that point nowhere or loop, a stray archive folder, a folder inside a class and a
    class folder with no video each get a line in failures.jsonl; no class is made from the
    empty folder; the two real videos are the only samples."""
    root = tmp_path / "in"
    for seed, c in enumerate(("cat", "dog")):
        (root / c).mkdir(parents=True)
        write_video(str(root / c / "v.mp4"), n=12, seed=seed)
    (root / "cat" / "gone.mp4").symlink_to(root / "nowhere.mp4")
    (root / "dog" / "loop.mp4").symlink_to(root / "dog" / "loop.mp4")
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "dog" / "nested").mkdir()
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no video here")
    out = tmp_path / "set"
    assert prep(["videos", str(root), "--out", str(out), "--workers", "0"]) == 0
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["classes"] == ["cat", "dog"] and manifest["num_samples"] == 2
    reasons = {os.path.relpath(r["source"], root): r["reason"]
               for r in map(json.loads, open(out / "failures.jsonl"))}
    assert reasons["cat/gone.mp4"].startswith("a link that points nowhere (-> ")
    assert reasons["dog/loop.mp4"] == "a link that loops (it leads back to itself)"
    assert reasons["__MACOSX"].startswith("a stray folder")
    assert reasons["dog/nested"].startswith("a folder inside a class folder")
    assert reasons["empty"] == "a class folder with no video file; no class is made from it"
    assert reasons["empty/notes.txt"].startswith("not a video file")


def test_split_folders_beside_other_folders_are_an_error_naming_both(tmp_path, capsys):
    root = tmp_path / "in"
    for d in ("train/cat", "val/cat", "extra/cat"):
        (root / d).mkdir(parents=True)
        write_video(str(root / d / "v.mp4"), n=12)
    assert prep(["videos", str(root), "--out", str(tmp_path / "set"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "holds split folders (train, val) beside other folders (extra)" in err


def test_exact_duplicates_are_noted_and_only_one_copy_is_used(tmp_path):
    """The same bytes under two names in one class, and a training copy of a test video: each
    later copy is a line in failures.jsonl naming the copy used, and the test split keeps its
    video (a training copy would leak it). Different files of the same size are both kept."""
    root = tmp_path / "in"
    for d in ("train/cat", "train/dog", "test/cat", "test/dog"):
        (root / d).mkdir(parents=True)
    write_video(str(root / "train/cat/a.mp4"), n=12, seed=1)
    write_video(str(root / "train/cat/a_copy.mp4"), n=12, seed=1)
    write_video(str(root / "train/dog/b.mp4"), n=12, seed=2)
    write_video(str(root / "test/dog/b_again.mp4"), n=12, seed=2)
    write_video(str(root / "test/cat/c.mp4"), n=12, seed=3)
    out = tmp_path / "set"
    assert prep(["videos", str(root), "--out", str(out), "--workers", "0"]) == 0
    train = {os.path.relpath(r["source"], root): r["reason"] for r in failures(out / "train")}
    assert set(train) == {"train/cat/a.mp4", "train/dog/b.mp4"} or \
        set(train) == {"train/cat/a_copy.mp4", "train/dog/b.mp4"}
    assert train["train/dog/b.mp4"] == (f"an exact duplicate of {root}/test/dog/b_again.mp4 in "
                                        f"test (the same bytes); only that copy is used")
    assert failures(out / "test") == []
    assert json.load(open(out / "test" / "manifest.json"))["num_samples"] == 2
    assert json.load(open(out / "train" / "manifest.json"))["num_samples"] == 1


def test_a_rotated_phone_video_is_stored_upright_and_the_rotation_recorded(tmp_path):
    """A display matrix of -90 degrees (a phone held upright): prep turns the frames as a
    player does (re-encoding even without --transcode) and records it, so training sees the
    picture a person sees; decoders that ignore the matrix would see it sideways."""
    from data.decode import display_rotation
    frames = moving_frames(12, 32, 48, seed=4)            # coded 32 x 48 (landscape)
    (tmp_path / "in" / "cls").mkdir(parents=True)
    data = encode_video(frames, fps=25, crf=0, rotation=-90)
    (tmp_path / "in" / "cls" / "phone.mp4").write_bytes(data)
    assert display_rotation(data) == -90
    assert display_rotation(encode_video(frames, fps=25)) == 0
    out = tmp_path / "set"
    assert prep(["videos", str(tmp_path / "in"), "--out", str(out), "--workers", "0"]) == 0
    _, samples = read_all(str(out))
    meta = json.loads(samples[0]["json"])
    assert meta["rotation"] == -90 and (meta["height"], meta["width"]) == (48, 32)
    stored = decode_frames(samples[0]["mp4"])
    assert display_rotation(samples[0]["mp4"]) == 0           # no matrix left to apply twice
    want = np.rot90(frames, k=-1, axes=(1, 2))                # -90: a quarter turn clockwise
    assert stored.shape == want.shape
    def gap(a, b):                        # brightness: chroma is halved; measured 6 vs 40
        return np.abs(a.astype(float).mean(-1) - b.astype(float).mean(-1)).mean()
    assert gap(stored, want) < 10 < 25 < gap(stored, np.rot90(frames, k=1, axes=(1, 2)))


def test_a_flat_tree_is_split_per_class_by_seed_the_same_every_time(tmp_path, capsys):
    """--split 0.8,0.1,0.1 over root/<class>/*: every class 8/1/1 of its 10 videos, the same
    assignment in another folder, another with another seed; an input with splits of its own
    refuses it; fine-tuning's no-splits message names it."""
    root = tmp_path / "in"
    n = 0
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            write_video(str(root / c / f"{c}{i}.mp4"), n=6, h=16, w=16, seed=n)
            n += 1

    def assignment(out, *extra):
        assert prep(["videos", str(root), "--out", str(out), "--workers", "0",
                     "--split", "0.8,0.1,0.1", *extra]) == 0
        got = {}
        for split in ("train", "val", "test"):
            _, samples = read_all(str(out / split))
            got[split] = sorted(os.path.basename(json.loads(s["json"])["source"])
                                for s in samples)
        return got
    a = assignment(tmp_path / "a")
    assert [len(a[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    for s in ("val", "test"):
        assert sorted(name[:3] for name in a[s]) == ["cat", "dog"]   # one of each class
    assert assignment(tmp_path / "b") == a
    assert assignment(tmp_path / "c", "--seed", "1") != a
    lists = tmp_path / "train.txt"
    lists.write_text(f"{root}/cat/cat0.mp4 0\n")
    assert prep(["videos", f"train={lists}", "--out", str(tmp_path / "d"), "--split",
                 "0.8,0.1,0.1"]) == 2
    assert "the inputs have splits of their own (train); drop --split" in capsys.readouterr().err
    assert prep(["videos", str(root), "--out", str(tmp_path / "e"), "--split", "0.8,0.3"]) == 2
    assert "give three fractions train,val,test that add up to 1" in capsys.readouterr().err
    from finetune.train import _check_splits
    assert prep(["videos", str(root), "--out", str(tmp_path / "flat"), "--workers", "0"]) == 0
    with pytest.raises(DataSetError, match="--split 0.8,0.1,0.1"):
        _check_splits(str(tmp_path / "flat"))


def test_an_npz_of_your_own_gets_its_own_class_names(tmp_path, capsys):
    """A MedMNIST-format npz under any name: class_0.. by default, or the names of --classes;
    official names only for a file named like an official one."""
    make_medmnist_npz(str(tmp_path / "scans.npz"), classes=4)
    assert prep(["medmnist", str(tmp_path / "scans.npz"), "--out", str(tmp_path / "a")]) == 0
    assert load_shard_set(str(tmp_path / "a"), "train").classes == [f"class_{i}"
                                                                    for i in range(4)]
    names = tmp_path / "names.txt"
    names.write_text("liver\nlung\nheart\nbone\n")
    assert prep(["medmnist", str(tmp_path / "scans.npz"), "--classes", str(names), "--out",
                 str(tmp_path / "b")]) == 0
    assert load_shard_set(str(tmp_path / "b"), "test").classes == ["liver", "lung", "heart",
                                                                   "bone"]
    names.write_text("liver\nlung\n")
    assert prep(["medmnist", str(tmp_path / "scans.npz"), "--classes", str(names), "--out",
                 str(tmp_path / "c")]) == 2
    assert "(2 class names for scans.npz)" in capsys.readouterr().err
    # an official name on a file with fewer classes: the official names, and a word about it
    make_medmnist_npz(str(tmp_path / "organmnist3d.npz"), classes=4)
    assert prep(["medmnist", str(tmp_path / "organmnist3d.npz"), "--out",
                 str(tmp_path / "d")]) == 0
    assert "its labels use 4 of the 11 organmnist3d classes" in capsys.readouterr().err


def test_prep_prints_progress_lines_when_its_output_is_not_a_terminal(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.0)
    assert prep(["synthetic", "--out", str(tmp_path / "s"), "--count", "12", "--size", "16",
                 "--frames", "4", "--workers", "0"]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if " inputs, " in x and "/s" in x]
    assert any(x.startswith("train: ") and "min left" in x for x in lines), lines


def test_a_deleted_failures_list_is_rebuilt_from_the_journal_or_the_set_refused(tmp_path,
                                                                                capsys):
    """A finished set whose failures.jsonl was deleted or cut short is not 'already complete'
    with its failures listed nowhere: prep rebuilds the file from its journal, the same lines,
    and without the journal refuses in one line."""
    root = tmp_path / "in"
    for seed, c in enumerate(("cat", "dog")):
        (root / c).mkdir(parents=True)
        write_video(str(root / c / "v.mp4"), n=12, seed=seed)
        (root / c / "bad.mp4").write_bytes(b"not a video")
        (root / c / "empty.mp4").write_bytes(b"")
    out = tmp_path / "set"
    args = ["videos", str(root), "--out", str(out), "--workers", "0"]
    assert prep(args) == 0
    listed = (out / "failures.jsonl").read_text()
    assert len(listed.splitlines()) == json.load(open(out / "manifest.json"))["num_failures"] == 4
    for damage in (lambda p: p.unlink(), lambda p: p.write_text(listed.splitlines()[0] + "\n")):
        damage(out / "failures.jsonl")
        capsys.readouterr()
        assert prep(args) == 0
        assert "rebuilt its 4 lines from the prep journal" in capsys.readouterr().err
        assert (out / "failures.jsonl").read_text() == listed
    (out / "failures.jsonl").unlink()
    (out / ".progress.jsonl").unlink()
    assert prep(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "counts 4 inputs that could not be used but " \
        "failures.jsonl is missing" in err and "new --out" in err


def test_a_shard_changed_under_a_running_job_is_caught_and_its_samples_skipped(tmp_path,
                                                                               caplog):
    """A shard the workers hashed, then modified in place while the job runs (a byte flipped,
    a re-prep into the same folder): before it is read again its file is seen to have changed
    and hashed again, so its samples are skipped and counted, with a warning naming it; a
    change made while the shard is being read is caught when that read ends."""
    from data.shard_reader import _VERIFIED, numbered_samples, shard_intact
    from data.stream import TrainStream
    out = str(tmp_path / "set")
    assert prep(["synthetic", "--out", out, "--count", "24", "--size", "64", "--frames", "16",
                 "--shard-samples", "4", "--workers", "0"]) == 0
    _VERIFIED.clear()
    cfg = StreamConfig(shards=out, batch_size=1, num_workers=0, num_frames=4, stride=1, size=32,
                       patch=8, mask="none", shuffle_buffer=1)
    stream = TrainStream(cfg)
    n = load_shard_set(out).num_samples
    it = iter(stream)
    first = {int(b["index"]) for _, b in zip(range(n), it)}     # a whole epoch, every shard
    assert first == set(range(n)) and sum(stream.skipped) == 0
    shard = os.path.join(out, "train", "shard-000001.tar")
    body = bytearray(open(shard, "rb").read())
    body[len(body) // 2] ^= 0xFF
    with open(shard, "r+b") as f:                      # in place: same inode, same size
        f.write(body)
    with caplog.at_level("WARNING"):
        second = [int(b["index"]) for _, b in zip(range(n), it)]
    assert set(second) == set(range(n)) - {4, 5, 6, 7} and sum(stream.skipped) == 4
    assert any("shard-000001.tar does not match the sha256" in r.message and
               "changed while the job ran" in r.message for r in caplog.records)
    # changed while it is being read: reported at its end, and skipped from then on
    body[len(body) // 2] ^= 0xFF
    open(shard, "wb").write(body)                      # repaired
    _VERIFIED.clear()
    ss = load_shard_set(os.path.join(out, "train"))
    s1 = ss.shards[1]
    assert shard_intact(s1)
    unit = plan_units([s.samples for s in ss.shards], 1)[1]
    reader = numbered_samples(s1.url, unit, set(range(unit.count)), s1)
    next(reader)
    body[-2048] ^= 0xFF                                 # in a later member, not yet read
    with open(shard, "r+b") as f:
        f.write(body)
    caplog.clear()
    with caplog.at_level("WARNING"):
        list(reader)
    assert any("changed while it was being read" in r.message for r in caplog.records)
    assert not shard_intact(s1)
    _VERIFIED.clear()
