"""Decoding raw files as users have them: display rotations, B-frames, pixel formats and colour
tags, through every decoder at sizes where that decoder is the one that really runs."""
import io
import os

import numpy as np
import pytest

from data import decode as dec
from data.decode import decode_frames, encode_video, upright


def _marked(h: int, w: int, n: int = 6) -> list:
    """Frames with a white block in the top-left corner (as shown) and a frame counter in
    green, so where the block lands tells the rotation applied."""
    out = []
    for t in range(n):
        f = np.full((h, w, 3), 40, np.uint8)
        f[:h // 4, :w // 4] = 255
        f[..., 1] = 40 + 12 * t
        out.append(f)
    return out


def _decord_runs(data: bytes) -> bool:
    import io
    try:
        out = dec.decord.VideoReader(io.BytesIO(data), num_threads=1).get_batch([0]).asnumpy()
        return out.ndim == 4 and out.shape[-1] == 3
    except Exception:
        return False


# (height, width) as shown, and the decoder that really runs at that size: decord at phone-like
# sizes, PyAV where decord mis-sizes the frames (a 32 px side)
SIZES = [((270, 480), "decord"), ((128, 192), "decord"), ((480, 272), "decord"),
         ((32, 48), "pyav")]


@pytest.mark.parametrize("rotation", [-90, 90, 180])
@pytest.mark.parametrize("shown,decoder", SIZES, ids=[f"{h}x{w}" for (h, w), _ in SIZES])
def test_a_rotated_file_decodes_as_shown_once_whichever_decoder_runs(shown, decoder, rotation):
    h, w = shown
    upright_frames = _marked(h, w)
    # the file stores the frames turned back, with a matrix telling the player to undo it
    stored = [upright(f, -rotation) for f in upright_frames]
    data = encode_video(stored, fps=25, crf=0, rotation=rotation)
    assert _decord_runs(data) == (decoder == "decord")      # the decoder meant is the one used
    got = decode_frames(data, [0, 3])
    assert got.shape == (2, h, w, 3)
    block = got[0, :h // 4, :w // 4, 0].mean()
    assert block > 200, f"the top-left block is {block:.0f}, not white: turned wrongly"
    assert got[0, h // 2:, w // 2:, 0].mean() < 80
    want = np.stack([upright_frames[0], upright_frames[3]]).astype(int)
    assert np.abs(got.astype(int) - want).mean() < 4


@pytest.mark.parametrize("rotation", [-90, 180])
def test_the_pyav_fallback_turns_as_decord_does_at_a_size_both_decode(monkeypatch, rotation):
    stored = [upright(f, -rotation) for f in _marked(270, 480)]
    data = encode_video(stored, fps=25, crf=0, rotation=rotation)
    by_decord = decode_frames(data, [1, 4])
    monkeypatch.setattr(dec, "_reader", lambda data, num_threads=1: _Broken())
    with pytest.raises(RuntimeError):
        _Broken().get_batch([0])
    by_pyav = dec._get_batch(_Broken(), data, [1, 4])
    assert by_pyav.shape == by_decord.shape == (2, 270, 480, 3)
    assert np.abs(by_pyav.astype(int) - by_decord.astype(int)).mean() < 1.5


class _Broken:
    def get_batch(self, idx):
        raise RuntimeError("decord failed")


def test_decord_turning_is_measured_not_assumed():
    # the installed decord2 turns frames itself; the project turns them only where it does not
    assert dec.decord_turns() is True


def test_a_decord_that_does_not_turn_gets_the_rotation_applied(monkeypatch):
    stored = [upright(f, 90) for f in _marked(270, 480)]
    data = encode_video(stored, fps=25, crf=0, rotation=-90)

    class Unturned:                         # decord 0.6.0: the frames as stored
        def get_batch(self, idx):
            import av
            import io
            with av.open(io.BytesIO(data)) as box:
                frames = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]

            class Out:
                def asnumpy(self_inner):
                    return np.stack([frames[i] for i in idx])
            return Out()
    monkeypatch.setattr(dec, "_DECORD_TURNS", [False])
    got = dec._get_batch(Unturned(), data, [0])
    assert got.shape == (1, 270, 480, 3) and got[0, :60, :100, 0].mean() > 200


def test_predict_features_and_visualize_see_a_rotated_file_upright(tmp_path):
    """The raw-file paths: a -90 file at a phone's size reaches the model upright through
    predict's and features' Predictor and visualize's clip_of."""
    import types

    from data.stream import StreamConfig
    from finetune.predict import Item, Predictor
    from pretrain.visualize import clip_of
    frames = _marked(270, 480, n=16)
    plain = encode_video(frames, fps=25, crf=0)
    turned = encode_video([upright(f, 90) for f in frames], fps=25, crf=0, rotation=-90)
    cfg = StreamConfig(num_frames=4, size=64, stride=2, test_clips=1, test_crops=1, mask="none")
    seen = {}
    trained = types.SimpleNamespace(data=cfg, model=types.SimpleNamespace(
        cfg=types.SimpleNamespace(in_chans=3)), logits=lambda video: video.flatten(1).float())
    predictor = Predictor(trained, batch_size=1)
    items = [Item("plain", "video", lambda: plain), Item("turned", "video", lambda: turned)]
    predictor.items(items, lambda item, out: seen.__setitem__(item.name, out[0]),
                    lambda failure: pytest.fail(str(failure)))
    assert seen["plain"].shape == (3 * 4 * 64 * 64,)
    assert (seen["plain"] - seen["turned"]).abs().mean() < 3
    a, b = (clip_of(d, 4, 2, 64).astype(float) for d in (plain, turned))
    assert a.shape == (4, 64, 64, 3) and np.abs(a - b).mean() < 3


def _encode(frames: list, pix_fmt: str = "yuv420p", bframes: int = 0, colorspace=None,
            full_range: bool = False, gop: int = 12, container: str = "mp4") -> bytes:
    """An H.264 file as cameras and other tools write them: another pixel format, B-frames
    (stored in decoding order, not shown order), a colour matrix tag, full range."""
    import io

    import av
    out = io.BytesIO()
    h, w = frames[0].shape[:2]
    with av.open(out, "w", format=container) as box:
        s = box.add_stream("libx264", rate=25)
        s.pix_fmt, s.width, s.height = pix_fmt, w, h
        s.gop_size = gop
        s.codec_context.max_b_frames = bframes
        s.options = {"crf": "12", "threads": "1",
                     "x264-params": f"b-adapt=0:bframes={bframes}:threads=1"}
        if colorspace is not None:
            s.codec_context.colorspace = colorspace
            s.codec_context.color_primaries = colorspace
            s.codec_context.color_trc = {1: 1, 9: 14}.get(colorspace, 2)
        if full_range:
            s.codec_context.color_range = 2
        for f in frames:
            frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=pix_fmt)
            if colorspace is not None:
                frame.colorspace = colorspace
            if full_range:
                frame.color_range = 2
            for p in s.encode(frame):
                box.mux(p)
        for p in s.encode():
            box.mux(p)
    return out.getvalue()


def _moving(h: int, w: int, n: int) -> list:
    """A bar moving right over a gradient with colour in it: motion makes x264 use B-frames,
    colour makes matrix errors show."""
    out = []
    for t in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 0] = np.linspace(30, 220, w, dtype=np.uint8)[None]
        f[..., 2] = np.linspace(200, 20, h, dtype=np.uint8)[:, None]
        f[:, (3 * t) % w:(3 * t) % w + 6, 1] = 230
        out.append(f)
    return out


def _shown_luma(data: bytes) -> np.ndarray:
    import io

    import av
    with av.open(io.BytesIO(data)) as box:
        return np.stack([f.to_ndarray(format="yuv420p")[:f.height]
                         for f in box.decode(video=0)])


@pytest.mark.parametrize("container", ["mp4", "matroska", "avi"])
@pytest.mark.parametrize("indices", [[24, 26, 28, 30], [0, 1, 2, 3], [5, 9, 13, 17],
                                     [13, 14, 15, 16, 17, 18, 19, 20], [35, 37, 39]])
def test_yuv420_frames_are_the_shown_frames_on_a_file_with_b_frames(indices, container):
    """mp4 and mkv keep presentation timestamps (out of order in storage with B-frames); AVI
    writes them rising in storage order, so there the decoder's output is counted."""
    import av
    import io

    from data.decode import decode_yuv420
    data = _encode(_moving(64, 96, 40), bframes=3, container=container)
    with av.open(io.BytesIO(data)) as box:
        kinds = {int(f.pict_type) for f in box.decode(video=0)}    # 3: AV_PICTURE_TYPE_B
    assert 3 in kinds, f"the fixture has no B-frames ({kinds}): it tests nothing"
    shown = _shown_luma(data)
    planes, _ = decode_yuv420(data, indices)
    for k, i in enumerate(indices):
        assert np.array_equal(planes[k, :64], shown[i]), f"frame {i} is another frame"
    rgb = decode_frames(data, indices)             # and the RGB path counts the same way
    assert rgb.shape == (len(indices), 64, 96, 3)


# (pixel format, colour matrix tag, full range): what phones, cameras and editors write
COLOURS = [("yuv420p", None, False), ("yuv420p", 1, False), ("yuv420p", 9, False),
           ("yuvj420p", None, True), ("yuv420p", 1, True), ("yuv420p10le", None, False),
           ("yuv420p10le", 9, False), ("yuv420p10le", 1, True)]


@pytest.mark.parametrize("pix_fmt,matrix,full", COLOURS,
                         ids=[f"{p}-{m}-{'full' if f else 'tv'}" for p, m, f in COLOURS])
def test_the_yuv420_path_converts_each_colour_as_the_rgb_path_does(pix_fmt, matrix, full):
    import torch

    from data.decode import decode_yuv420
    from data.transforms import _yuv_crop
    data = _encode(_moving(96, 128, 8), pix_fmt=pix_fmt, colorspace=matrix, full_range=full)
    planes, colour = decode_yuv420(data, [2, 5])
    assert colour == ({1: 1, 9: 2}.get(matrix, 0), int(full))
    yuv = _yuv_crop(torch.from_numpy(planes), torch.tensor([0, 1]), 0, 0, 96, 128, colour)
    rgb = torch.from_numpy(decode_frames(data, [2, 5]))
    d = (yuv.float() - rgb.float()).abs()
    print(f"{pix_fmt} matrix {matrix} full {full}: mean {d.mean():.2f}, max {d.max():.0f}")
    # 8-bit: measured mean 0.05-0.64, max 1-2; 10-bit, rounded to 8 bits before the matrix
    # while swscale converts from 10: mean 1.05-1.50, max 5-6
    assert (d.mean() < 1.0 and d.max() <= 3) if "10" not in pix_fmt else \
        (d.mean() < 2.0 and d.max() <= 8)


@pytest.mark.parametrize("pix_fmt", ["yuv444p", "yuv422p"])
def test_a_layout_the_yuv420_path_cannot_ship_is_named_not_skipped(pix_fmt):
    from data.decode import UnshippableFrames, decode_yuv420
    data = _encode(_moving(64, 96, 6), pix_fmt=pix_fmt)
    with pytest.raises(UnshippableFrames, match=f"{pix_fmt}.*device_format=rgb"):
        decode_yuv420(data, [1])


def test_a_set_stored_as_it_came_with_yuv444_videos_is_refused_before_the_run(tmp_path):
    """Prep records each video's pixel format; data.device_format=yuv420 on a set holding
    videos it cannot ship is refused at the preflight, naming the files and the way out. A set
    prepared before formats were recorded stops in the loader with the same message (never a
    'corrupt sample' skipped and counted)."""
    import json

    from data.clips import check_stride
    from data.manifest import DataSetError
    from data.prep.cli import main as prep
    from data.stream import StreamConfig, TrainStream
    for cls, fmts in (("a", ["yuv420p", "yuv420p10le"]), ("b", ["yuv444p", "yuvj420p"])):
        (tmp_path / "in" / cls).mkdir(parents=True)
        for k, fmt in enumerate(fmts):
            data = _encode(_moving(64, 96, 24), pix_fmt=fmt, full_range=fmt == "yuvj420p")
            (tmp_path / "in" / cls / f"{fmt}_{k}.mp4").write_bytes(data)
    out = tmp_path / "set"
    assert prep(["videos", str(tmp_path / "in"), "--out", str(out), "--workers", "0"]) == 0
    kw = dict(shards=str(out), batch_size=2, num_workers=0, num_frames=4, stride=2, size=32,
              patch=8, augment="device", device_format="yuv420", shuffle_buffer=1, seed=0)
    with pytest.raises(ValueError, match=r"cannot ship 1 video.*yuv444p_0\.mp4 \(yuv444p "
                                         r"96x64\).*--transcode.*device_format=rgb"):
        check_stride(StreamConfig(**kw))
    check_stride(StreamConfig(**{**kw, "device_format": "rgb"}))
    # the same set with the formats taken out of its metadata, as an older prep wrote it
    import tarfile
    old = tmp_path / "old"
    old.mkdir()
    for name in os.listdir(out):
        src = out / name
        if not name.endswith(".tar"):
            (old / name).write_bytes(src.read_bytes())
            continue
        with tarfile.open(src) as tin, tarfile.open(old / name, "w") as tout:
            for m in tin:
                body = tin.extractfile(m).read()
                if m.name.endswith(".json"):
                    meta = json.loads(body)
                    meta.pop("pix_fmt")
                    body = json.dumps(meta).encode()
                m.size = len(body)
                tout.addfile(m, io.BytesIO(body))
    manifest = json.loads((old / "manifest.json").read_text())
    import hashlib
    for shard in manifest["shards"]:
        body = (old / shard["name"]).read_bytes()
        shard["sha256"], shard["bytes"] = hashlib.sha256(body).hexdigest(), len(body)
    (old / "manifest.json").write_text(json.dumps(manifest))
    check_stride(StreamConfig(**{**kw, "shards": str(old)}))     # nothing recorded to refuse
    with pytest.raises(DataSetError, match=r"yuv444p_0\.mp4.*yuv444p.*device_format=rgb"):
        for _ in zip(range(10), TrainStream(StreamConfig(**{**kw, "shards": str(old)}))):
            pass
