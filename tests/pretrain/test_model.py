import pytest
import torch
from einops import rearrange

from data.masks import running_cell_mask, tube_mask
from pretrain.model import PRESETS, ModelConfig, VideoMAE, count_parameters, patchify, unpatchify


def tiny(**kw):
    base = dict(preset="vit_tiny", img_size=32, patch_size=8, num_frames=8, tubelet_size=2)
    base.update(kw)
    return VideoMAE(ModelConfig(**base))


def clip_and_mask(model, b=2, ratio=0.75, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.cfg
    video = torch.randint(0, 256, (b, c.in_chans, c.num_frames, c.img_size, c.img_size),
                          dtype=torch.uint8, generator=g)
    return video, tube_mask(b, c.grid, ratio, g)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_with_published_sizes(preset):
    m = VideoMAE(ModelConfig(preset=preset))
    enc = count_parameters(m.encoder) / 1e6
    expected = {"vit_tiny": 0.6, "vit_s": 21.9, "vit_b": 86.2, "vit_l": 303.3, "vit_h": 631.9}
    assert abs(enc - expected[preset]) / expected[preset] < 0.01
    assert "encoder.pos_embed" not in m.state_dict()  # a fixed table, not a parameter


@pytest.mark.parametrize("geometry", [dict(), dict(in_chans=1, img_size=28, patch_size=7,
                                                   num_frames=28, tubelet_size=4),
                                      dict(img_size=64, patch_size=16, num_frames=16)])
def test_shapes_loss_and_gradients_for_every_geometry(geometry):
    m = tiny(**geometry)
    video, mask = clip_and_mask(m)
    out = m(video, mask)
    n_hidden = int(mask[0].sum())
    assert out["pred"].shape == (2, n_hidden, m.cfg.patch_dim)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_loss_is_only_on_hidden_tokens():
    m = tiny()
    video, mask = clip_and_mask(m, b=1)
    base = m(video, mask)["recon_loss"]
    # change only pixels of visible tubelets: the encoder input changes but the target at
    # hidden tokens does not; change pixels of one hidden tubelet: the loss target changes
    patches = patchify(video.float(), 2, 8)
    visible = (~mask[0]).nonzero()[0, 0]
    hidden = mask[0].nonzero()[0, 0]
    t, h, w = m.cfg.grid
    edit_vis, edit_hid = patches.clone(), patches.clone()
    edit_vis[0, visible] = 255 - edit_vis[0, visible]
    edit_hid[0, hidden] = torch.roll(edit_hid[0, hidden], 1, 0)
    target = m(video, mask)["target"]
    vis_target = m(unpatchify(edit_vis, (t, h, w), 2, 8).byte(), mask)["target"]
    hid_target = m(unpatchify(edit_hid, (t, h, w), 2, 8).byte(), mask)["target"]
    assert torch.equal(target, vis_target)
    assert not torch.equal(target, hid_target)
    assert base.item() > 0


def test_target_is_per_tubelet_normalised_pixels():
    m = tiny()
    video, mask = clip_and_mask(m, b=1)
    target = m.target(video.float() / 255)  # (1, N, 2*8*8*3)
    per_tubelet = rearrange(target, "b n (p c) -> b n p c", c=3)
    assert torch.allclose(per_tubelet.mean(2), torch.zeros(1, 1, 3), atol=1e-5)
    assert torch.allclose(per_tubelet.std(2), torch.ones(1, 1, 3), atol=1e-3)


def test_a_target_std_floor_keeps_flat_tubelets_flat():
    """model.target_std_floor: a tubelet whose std is below the floor (a flat background with
    codec noise) is scaled by the floor, so its target stays near zero instead of becoming
    unit-variance noise; tubelets with more texture are normalised exactly as without it."""
    torch.manual_seed(0)
    pixels = torch.full((1, 3, 8, 32, 32), 0.3) + 0.002 * torch.randn(1, 3, 8, 32, 32)
    pixels[..., :8, :8] = torch.rand(1, 3, 8, 8, 8)            # one textured column of tubelets
    plain, floored = tiny(), tiny(target_std_floor=0.02)
    a, b = plain.target(pixels), floored.target(pixels)
    textured = [0, 16, 32, 48]                                  # the tubelets at (t, 0, 0)
    flat = [i for i in range(a.shape[1]) if i not in textured]
    assert a[0, flat].std() > 0.9 and b[0, flat].abs().max() < 0.5
    assert torch.allclose(a[0, textured], b[0, textured])


def test_uint8_and_prenormalised_inputs_agree():
    m = tiny().eval()
    video, mask = clip_and_mask(m)
    x, _ = m.normalize(video)
    a, b = m(video, mask), m(x, mask)
    assert torch.allclose(a["pred"], b["pred"], atol=1e-5)
    assert torch.allclose(a["recon_loss"], b["recon_loss"], atol=1e-5)


def test_decoder_masking_reconstructs_a_fixed_subset_of_hidden_tokens():
    m = tiny()
    video, mask = clip_and_mask(m, ratio=0.75)
    dec = running_cell_mask(mask, m.cfg.grid, 0.5, torch.Generator().manual_seed(0))
    assert (dec & ~mask).sum() == 0                       # only hidden tokens
    assert dec.sum(1).tolist() == [int(mask[0].sum()) // 2] * 2
    out = m(video, mask, dec)
    assert out["pred"].shape[1] == int(dec[0].sum())
    full = m(video, mask)
    rec = m.reconstruct(video, mask, out, dec)
    assert rec.shape == (2, 3, 8, 32, 32) and 0 <= rec.min() and rec.max() <= 1
    assert full["pred"].shape[1] == int(mask[0].sum())


def test_positional_table_follows_the_clip_size():
    m = tiny().eval()
    video = torch.randint(0, 256, (1, 3, 8, 48, 48), dtype=torch.uint8)
    mask = tube_mask(1, (4, 6, 6), 0.75)
    out = m(video, mask)
    assert out["pred"].shape == (1, 4 * 27, m.cfg.patch_dim)


@pytest.mark.slow
def test_the_model_traces_into_one_graph_given_token_ids():
    """What runtime.compile relies on: with the masks given as host-computed token ids the
    forward has no data-dependent shapes, so dynamo captures it whole (no graph breaks)."""
    from data.masks import token_ids
    m = tiny()
    video, mask = clip_and_mask(m)
    dec = running_cell_mask(mask, m.cfg.grid, 0.5)
    ids = token_ids(mask, dec)
    explained = torch._dynamo.explain(m)(video, mask, dec, ids=ids)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    torch.manual_seed(0)
    eager = m(video, mask, dec)["loss"]
    torch.manual_seed(0)
    traced = torch.compile(m, backend="aot_eager", dynamic=False)(video, mask, dec, ids=ids)
    assert torch.allclose(traced["loss"], eager, rtol=1e-5, atol=1e-6)
