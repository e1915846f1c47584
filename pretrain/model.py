"""VideoMAE: tube-masked video autoencoder (nanoGPT-style: the whole model in one file).

The encoder sees only visible tokens; the decoder gets them back with a learned mask token at
every position to reconstruct, each with the fixed positional table, and predicts per-tubelet
normalised pixels; the loss is the MSE on reconstructed tokens only. Parameter names match the
published VideoMAE checkpoints, so their state dicts load directly.

Input clips are ``(B, C, T, H, W)``: uint8 (normalised here, on the device) or float already
normalised with ``mean``/``std``. Masks are bool ``(B, N)``, True = hidden, t-major tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from data.masks import token_ids

from .layers import Block, TubeletEmbed, gather_tokens, sincos_table, table_for

STD_FLOOR = 1e-2      # pixel std (in [0, 1] units) below which a patch counts as flat
STATS_WEIGHT = 1e-3   # weight of the stats head's loss in what is back-propagated
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# width, depth, heads of the encoder; width, depth, heads of the decoder
PRESETS = {
    "vit_tiny": (96, 4, 3, 64, 2, 2),
    "vit_s": (384, 12, 6, 192, 4, 3),
    "vit_b": (768, 12, 12, 384, 4, 6),
    "vit_l": (1024, 24, 16, 512, 4, 8),
    "vit_h": (1280, 32, 16, 512, 4, 8),
}
def channel_stats(in_chans: int, mean, std) -> tuple[tuple, tuple]:
    """The normalisation of a model's input: given values, else ImageNet's for 3 channels and
    0.5 / 0.5 otherwise (volumes)."""
    mean = mean or (IMAGENET_MEAN if in_chans == 3 else (0.5,) * in_chans)
    std = std or (IMAGENET_STD if in_chans == 3 else (0.5,) * in_chans)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"model.mean/std need {in_chans} values")
    return tuple(mean), tuple(std)


_PRESET_FIELDS = ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                  "decoder_num_heads")


@dataclass
class ClipGeometry:
    """A clip's geometry and its token shape, stated once, in a recipe's ``model`` section:
    the stream takes its frames, side and mask grid from it (``data.stream``), an export records
    it (encoder.json), and fine-tuning from that export takes it from there."""
    img_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: int = 2
    in_chans: int = 3


@dataclass
class ModelConfig(ClipGeometry):
    """The `model` section of a recipe. Widths left at None come from ``preset``."""
    preset: str = "vit_b"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    norm_eps: float = 1e-6
    norm_pix_loss: bool = True
    target_std_floor: float = 0.0    # with norm_pix_loss: each tubelet's std is taken as at
                                     # least this (pixels in [0, 1]); 0 = VideoMAE's (+1e-6).
                                     # A floor keeps flat tubelets (codec noise) from becoming
                                     # unit-variance noise targets
    mean: tuple | None = None        # None: ImageNet for 3 channels, 0.5 otherwise
    std: tuple | None = None
    predict_stats: bool = True       # a detached head predicting each patch's mean/std (pictures)

    def resolved(self) -> "ModelConfig":
        if self.preset not in PRESETS:
            raise ValueError(f"model.preset {self.preset!r} is not one of {sorted(PRESETS)}")
        filled = {k: v if getattr(self, k) is None else getattr(self, k)
                  for k, v in zip(_PRESET_FIELDS, PRESETS[self.preset])}
        mean, std = channel_stats(self.in_chans, self.mean, self.std)
        cfg = replace(self, **filled, mean=mean, std=std)
        if cfg.num_frames % cfg.tubelet_size or cfg.img_size % cfg.patch_size:
            raise ValueError("model.num_frames must be a multiple of tubelet_size and img_size a "
                             "multiple of patch_size")
        return cfg

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.num_frames // self.tubelet_size, self.img_size // self.patch_size,
                self.img_size // self.patch_size)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def patch_dim(self) -> int:
        return self.tubelet_size * self.patch_size ** 2 * self.in_chans


def _init_weights(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class VideoMAEEncoder(nn.Module):
    """Tubelet embedding + positional table + ViT blocks + final norm.

    forward: clip (B, C, T, H, W) float, and the visible token numbers (B, N_visible) or None
    (every token) -> tokens (B, N_visible, D).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.patch_embed = TubeletEmbed(cfg.in_chans, cfg.embed_dim, cfg.tubelet_size,
                                        cfg.patch_size)
        self.register_buffer("pos_embed", sincos_table(cfg.num_patches, cfg.embed_dim)[None],
                             persistent=False)
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList([
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, drop_path=r,
                  norm_layer=norm) for r in rates])
        self.norm = norm(cfg.embed_dim)

    def pos_table(self, n: int) -> torch.Tensor:
        return table_for(self.pos_embed, n)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        return tokens + self.pos_table(tokens.shape[1]).to(tokens.dtype)

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        if visible is None:
            x = self.embed(x)
        else:  # embed the visible tubelets only
            t, h, w = self.patch_embed.grid(*x.shape[2:])
            pos = self.pos_table(t * h * w).expand(x.shape[0], -1, -1)
            x = self.patch_embed.forward_selected(x, visible)            # (B, N_visible, D)
            x = x + gather_tokens(pos, visible).to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class VideoMAEDecoder(nn.Module):
    """ViT blocks + norm + linear head to tubelet pixels; returns only the last ``n`` tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList([
            Block(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.qkv_bias,
                  norm_layer=norm) for _ in range(cfg.decoder_depth)])
        self.norm = norm(cfg.decoder_embed_dim)
        self.head = nn.Linear(cfg.decoder_embed_dim, cfg.patch_dim)

    def features(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x[:, -n:])

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return self.head(self.features(x, n))


def patchify(pixels: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, t*p*p, C), tokens t-major, values in (t, p, p) order."""
    return rearrange(pixels, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
                     p0=tubelet, p1=patch, p2=patch)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], tubelet: int,
               patch: int) -> torch.Tensor:
    """(B, N, t*p*p, C) -> (B, C, T, H, W), the inverse of patchify."""
    t, h, w = grid
    return rearrange(patches, "b (t h w) (p0 p1 p2) c -> b c (t p0) (h p1) (w p2)",
                     t=t, h=h, w=w, p0=tubelet, p1=patch, p2=patch)


class VideoMAE(nn.Module):
    """The pre-training model: encoder, ``encoder_to_decoder``, ``mask_token``, decoder."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        self.encoder = VideoMAEEncoder(cfg)
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder = VideoMAEDecoder(cfg)
        self.register_buffer("decoder_pos_embed",
                             sincos_table(cfg.num_patches, cfg.decoder_embed_dim)[None],
                             persistent=False)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, -1, 1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, -1, 1, 1, 1),
                             persistent=False)
        # Not part of the published model: predicts each reconstructed patch's pixel mean and
        # log-std from detached decoder features, so pictures can be de-normalised without the
        # hidden ground truth. It never changes the encoder or decoder.
        self.stats_head = (nn.Linear(cfg.decoder_embed_dim, 2 * cfg.in_chans)
                           if cfg.predict_stats else None)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    # -- inputs and targets ---------------------------------------------------------------
    def normalize(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (normalised input in the parameters' dtype, pixels in [0, 1] as float32)."""
        if video.dtype == torch.uint8:
            pixels = video.float() / 255.0
            x = (pixels - self.mean) / self.std
        else:
            x = video
            pixels = video.float() * self.std + self.mean
        return x.to(self.encoder.patch_embed.proj.weight.dtype), pixels

    def target(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) in [0, 1] -> (B, N, patch_dim) in (t, p, p, c) order: each tubelet
        normalised per channel by its own mean and unbiased std (+1e-6; at least
        ``target_std_floor``) when norm_pix_loss."""
        p = patchify(pixels, self.cfg.tubelet_size, self.cfg.patch_size)
        if self.cfg.norm_pix_loss:
            std = p.var(dim=-2, unbiased=True, keepdim=True).sqrt()
            if self.cfg.target_std_floor > 0:
                std = std.clamp_min(self.cfg.target_std_floor)
            p = (p - p.mean(dim=-2, keepdim=True)) / (std + 1e-6)
        return rearrange(p, "b n p c -> b n (p c)")

    # -- forward ----------------------------------------------------------------------------
    def forward(self, video: torch.Tensor, mask: torch.Tensor | None,
                decode_mask: torch.Tensor | None = None,
                ids: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """video (B, C, T, H, W); mask (B, N) True = hidden from the encoder; decode_mask
        (B, N) the hidden tokens to reconstruct (default: all hidden), same count per sample.
        ``ids``: the same as ``data.masks.token_ids(mask, decode_mask)``, computed by the caller
        on the host (the training loop does); the masks are then not needed. Without it the
        counts are read from the masks, which waits for the device.

        Returns {'loss': what to back-propagate, 'recon_loss': the VideoMAE MSE,
        'pred': (B, N_rec, patch_dim), 'target', 'stats_loss' (when predicting stats)}.
        """
        vis_ids, rec_ids = ids if ids is not None else token_ids(mask, decode_mask)
        x, pixels = self.normalize(video)
        b, n_rec = x.shape[0], rec_ids.shape[1]
        vis = self.encoder_to_decoder(self.encoder(x, vis_ids))      # (B, N_vis, Dd)
        t, h, w = self.encoder.patch_embed.grid(*x.shape[2:])
        pos = table_for(self.decoder_pos_embed, t * h * w).to(vis.dtype).expand(b, -1, -1)
        tokens = torch.cat([vis + gather_tokens(pos, vis_ids),
                            self.mask_token.to(vis.dtype) + gather_tokens(pos, rec_ids)], dim=1)
        feats = self.decoder.features(tokens, n_rec)                # (B, N_rec, Dd)
        pred = self.decoder.head(feats)
        with torch.no_grad():
            target = gather_tokens(self.target(pixels), rec_ids)
        recon = F.mse_loss(pred.float(), target)
        out = {"recon_loss": recon, "loss": recon, "pred": pred, "target": target}
        if self.stats_head is not None:
            stats = self.stats_head(feats.detach()).float()         # (B, N_rec, 2C)
            with torch.no_grad():
                raw = patchify(pixels, self.cfg.tubelet_size, self.cfg.patch_size)
                raw = gather_tokens(raw, rec_ids)                   # (B, N_rec, t*p*p, C)
                true = torch.cat([raw.mean(-2), raw.std(-2).clamp_min(STD_FLOOR).log()], dim=-1)
            out["stats_loss"] = F.mse_loss(stats, true)
            out["stats"] = stats
            # AdamW is invariant to the loss scale, so the small weight does not slow the head
            # down; it keeps its gradients out of the global norm that clipping looks at.
            out["loss"] = recon + STATS_WEIGHT * out["stats_loss"]
        return out

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor, mask: torch.Tensor, out: dict,
                    decode_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pixels in [0, 1] (B, C, T, H, W): visible tubelets from the input, hidden ones from
        the prediction, de-normalised with the model's own predicted mean/std (never the hidden
        ground truth's). Without the stats head, hidden patches are shown at mid-grey."""
        cfg = self.cfg
        _, pixels = self.normalize(video)
        grid = (pixels.shape[2] // cfg.tubelet_size, pixels.shape[3] // cfg.patch_size,
                pixels.shape[4] // cfg.patch_size)
        patches = patchify(pixels, cfg.tubelet_size, cfg.patch_size).clone()  # (B, N, P, C)
        b, n, p, c = patches.shape
        pred = rearrange(out["pred"].float(), "b n (p c) -> b n p c", c=c)
        if "stats" in out and cfg.norm_pix_loss:
            mean, logstd = out["stats"][..., :c], out["stats"][..., c:]
            pred = pred * logstd.exp()[:, :, None] + mean[:, :, None]
        elif cfg.norm_pix_loss:
            pred = torch.full_like(pred, 0.5)
        rec = mask if decode_mask is None else decode_mask
        patches[rec] = pred.reshape(-1, p, c).to(patches.dtype)
        return unpatchify(patches, grid, cfg.tubelet_size, cfg.patch_size).clamp(0, 1)


def initial_model(cfg: ModelConfig, seed: int) -> VideoMAE:
    """The model a pre-training run with run.seed ``seed`` starts from (the same on every rank,
    and what ``pretrain.export --initial`` rebuilds)."""
    torch.manual_seed(seed)
    return VideoMAE(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

