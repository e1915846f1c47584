import numpy as np
import pytest

from data.sampling import (clip_span, eval_clip_indices, resample_depth_indices,
                           sample_frame_indices)


def test_strided_indices_fit_inside_the_video_from_a_random_start():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = sample_frame_indices(300, 16, 4, rng)
        assert len(idx) == 16 and np.all(np.diff(idx) == 4)
        assert idx[0] >= 0 and idx[-1] <= 299
        starts.add(int(idx[0]))
    assert clip_span(16, 4) == 61
    assert min(starts) < 20 and max(starts) > 220  # starts cover [0, 300 - 61]


def test_exact_span_has_a_single_start():
    idx = sample_frame_indices(61, 16, 4, np.random.default_rng(5))
    assert idx.tolist() == list(range(0, 61, 4))


@pytest.mark.parametrize("n", [1, 7, 30, 60])
def test_short_videos_still_yield_num_frames_indices(n):
    clamp = sample_frame_indices(n, 16, 4, np.random.default_rng(0), "clamp")
    loop = sample_frame_indices(n, 16, 4, np.random.default_rng(0), "loop")
    assert len(clamp) == len(loop) == 16
    assert clamp.tolist() == [min(4 * i, n - 1) for i in range(16)]
    assert loop.tolist() == [(4 * i) % n for i in range(16)]


def test_eval_clips_cover_the_video_evenly():
    idx = eval_clip_indices(300, 16, 4, 5)
    assert idx.shape == (5, 16)
    assert idx[0, 0] == 0 and idx[-1, -1] == 299
    starts = idx[:, 0]
    assert np.all(np.diff(starts) > 0)
    centre = eval_clip_indices(300, 16, 4, 1)
    assert centre[0, 0] == (300 - 61) // 2


def test_depth_resampling():
    assert resample_depth_indices(28, 28).tolist() == list(range(28))
    down = resample_depth_indices(64, 16)
    assert down.tolist() == [2 + 4 * i for i in range(16)]
    up = resample_depth_indices(8, 16)
    assert up.tolist() == [i // 2 for i in range(16)]
