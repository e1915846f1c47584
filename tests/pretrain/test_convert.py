
import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForPreTraining

from data.masks import tube_mask
from pretrain.convert import detect_layout, load_published, ours_to_hf, read_state_dict, to_ours
from pretrain.export import export_hf
from pretrain.model import ModelConfig, VideoMAE


def pair(impl: str, **geometry):
    """Our model (random weights) and transformers' model holding the same weights."""
    torch.manual_seed(0)
    cfg = ModelConfig(preset="vit_tiny", img_size=32, patch_size=8, num_frames=4,
                      norm_eps=1e-5, predict_stats=False, **geometry)
    ours = VideoMAE(cfg).eval()
    c = ours.cfg
    hf_cfg = VideoMAEConfig(
        image_size=c.img_size, patch_size=c.patch_size, num_channels=c.in_chans,
        num_frames=c.num_frames, tubelet_size=c.tubelet_size, hidden_size=c.embed_dim,
        num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
        intermediate_size=4 * c.embed_dim, decoder_hidden_size=c.decoder_embed_dim,
        decoder_num_hidden_layers=c.decoder_depth,
        decoder_num_attention_heads=c.decoder_num_heads,
        decoder_intermediate_size=4 * c.decoder_embed_dim, use_mean_pooling=False,
        layer_norm_eps=1e-5, norm_pix_loss=True, hidden_act="gelu", attn_implementation=impl)
    hf = VideoMAEForPreTraining(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(ours_to_hf(ours.state_dict()), strict=False)
    assert missing == [] and unexpected == []
    return ours, hf


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_outputs_equal_transformers_videomae_for_pretraining(impl):
    ours, hf = pair(impl)
    c = ours.cfg
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (2, 3, c.num_frames, c.img_size, c.img_size),
                          dtype=torch.uint8, generator=g)
    mask = tube_mask(2, c.grid, 0.75, g)
    with torch.no_grad():
        a = ours(video, mask)
        x, _ = ours.normalize(video)
        b = hf(x.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)   # HF takes (B, T, C, H, W)
    assert (a["pred"] - b.logits).abs().max() < 1e-5
    assert abs(a["recon_loss"].item() - b.loss.item()) < 1e-5


def test_round_trip_through_the_hf_layout_and_legacy_bias_names():
    ours, hf = pair("sdpa")
    back = to_ours(hf.state_dict())
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    legacy = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v
              for k, v in hf.state_dict().items()}
    assert all(torch.equal(to_ours(legacy)[k], v) for k, v in ours.state_dict().items())


def test_official_checkpoint_files_pretrained_and_finetuned(tmp_path):
    ours, _ = pair("sdpa")
    sd = ours.state_dict()
    torch.save({"model": sd}, tmp_path / "videomae_pretrain.pth")        # official v1/v2 style
    loaded = read_state_dict(str(tmp_path / "videomae_pretrain.pth"))
    assert detect_layout(loaded) == "pretrain"
    fresh = VideoMAE(ours.cfg)
    fresh.load_state_dict(to_ours(loaded), strict=False)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())
    # fine-tuned: encoder at the top level with fc_norm + head, wrapped in "module"
    ft = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    ft.update({"fc_norm.weight": torch.ones(96), "fc_norm.bias": torch.zeros(96),
               "head.weight": torch.zeros(400, 96), "head.bias": torch.zeros(400)})
    torch.save({"module": ft}, tmp_path / "videomae_ft.pth")
    conv = to_ours(read_state_dict(str(tmp_path / "videomae_ft.pth")))
    assert torch.equal(conv["encoder.blocks.0.attn.qkv.weight"],
                       sd["encoder.blocks.0.attn.qkv.weight"])
    assert conv["head.weight"].shape == (400, 96)


def test_export_to_a_hf_folder_loads_back(tmp_path):
    ours, _ = pair("sdpa")
    export_hf(ours.state_dict(), ours.cfg, str(tmp_path / "hf"))
    hf = VideoMAEForPreTraining.from_pretrained(str(tmp_path / "hf"))
    sd, fields = load_published(str(tmp_path / "hf"))
    assert fields["embed_dim"] == 96 and fields["depth"] == ours.cfg.depth
    assert all(torch.equal(sd[k], v) for k, v in ours.state_dict().items())
    assert hf.config.hidden_size == 96


def test_unknown_layouts_are_named():
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        to_ours({"conv1.weight": torch.zeros(1)})


def test_the_convert_command_writes_an_export_with_the_geometry(tmp_path, capsys):
    """python -m pretrain.convert: an official file (widths read off its tensors, side and
    frames from the options) and a HF folder become our encoder export, which loads back into
    the same encoder; --help is an example; a junk file is one line."""
    import json
    from safetensors.torch import load_file
    from pretrain.convert import main
    ours, _ = pair("sdpa")
    torch.save({"model": ours.state_dict()}, tmp_path / "official.pth")
    assert main([str(tmp_path / "official.pth"), "--out", str(tmp_path / "a"), "--img-size",
                 "32", "--num-frames", "4"]) == 0
    meta = json.load(open(tmp_path / "a" / "encoder.json"))["model"]
    c = ours.cfg.resolved()
    assert (meta["embed_dim"], meta["depth"], meta["num_heads"], meta["patch_size"],
            meta["tubelet_size"], meta["img_size"], meta["num_frames"]) == \
        (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.tubelet_size, 32, 4)
    enc = load_file(str(tmp_path / "a" / "encoder.safetensors"))
    blocks = {k[len("encoder."):]: v for k, v in ours.state_dict().items()
              if k.startswith("encoder.blocks.")}
    assert blocks and all(torch.equal(enc[k], v) for k, v in blocks.items())
    export_hf(ours.state_dict(), ours.cfg, str(tmp_path / "hf"))
    assert main([str(tmp_path / "hf"), "--out", str(tmp_path / "b")]) == 0
    assert json.load(open(tmp_path / "b" / "encoder.json"))["model"]["img_size"] == 32
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "python -m pretrain.convert checkpoint.pth --out" in capsys.readouterr().out
    (tmp_path / "junk.pth").write_bytes(b"junk")
    assert main([str(tmp_path / "junk.pth"), "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("pretrain.convert: error: ")
