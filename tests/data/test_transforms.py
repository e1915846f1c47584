import numpy as np
import torch

from data.transforms import (MULTISCALE, eval_crops, multiscale_crop_box, train_transform,
                             volume_transform)


def test_multiscale_boxes_use_the_published_scales_and_stay_inside():
    rng = np.random.default_rng(0)
    h, w = 240, 320
    sides = {int(240 * s) for s in MULTISCALE}
    for _ in range(300):
        top, left, ch, cw = multiscale_crop_box(h, w, rng)
        assert ch in sides and cw in sides
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w


def test_train_transform_layout_and_identity_when_the_crop_is_the_frame():
    frames = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    out = train_transform(frames, 32, np.random.default_rng(0), scales=(1.0,))
    assert out.shape == (3, 8, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, torch.from_numpy(frames).permute(3, 0, 1, 2))
    resized = train_transform(frames, 16, np.random.default_rng(0))
    assert resized.shape == (3, 8, 16, 16)


def test_flip_is_a_mirror():
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    flips = [train_transform(frames, 16, np.random.default_rng(s), scales=(1.0,), flip=True)
             for s in range(20)]
    plain = torch.from_numpy(frames).permute(3, 0, 1, 2)
    assert any(torch.equal(f, plain.flip(-1)) for f in flips)
    assert any(torch.equal(f, plain) for f in flips)


def test_three_crops_along_the_long_side():
    frames = np.zeros((4, 20, 60, 3), np.uint8)
    frames[..., :20, :] = 10
    frames[..., 40:, :] = 250
    views = eval_crops(frames, 20, 3)
    assert views.shape == (3, 3, 4, 20, 20)
    assert views[0].float().mean() < 20 and views[2].float().mean() > 240


def test_volume_is_a_one_channel_clip():
    vol = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
    out = volume_transform(vol, np.arange(4), None)
    assert out.shape == (1, 4, 6, 6)
    assert torch.equal(out[0], torch.from_numpy(vol))


def test_the_float_resize_of_devices_without_a_uint8_kernel_is_within_one_level():
    from data.transforms import resize_float, resize_frames
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (4, 3, 45, 61), dtype=torch.uint8, generator=g)
    for size in ((32, 32), (64, 48)):
        a = resize_frames(frames, size).int()
        b = resize_float(frames.contiguous(memory_format=torch.channels_last), size).int()
        assert a.shape == b.shape and (a - b).abs().max() <= 1
