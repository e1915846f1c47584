"""ViViT (Arnab et al. 2021): four models over three tokenisers, built from pretrain.layers.

Tokenisers (all give a (T', H', W') grid of tokens, t-major):
  tubelet  Conv3d with kernel = stride = (t, p, p) (VideoMAE's cube embedding);
  uniform  uniform frame sampling: every t-th frame, each embedded by a 2D (1, p, p) patch conv;
  t2t      a 3D tokens-to-token soft split: overlapping unfold over (T, H, W), a small token
           transformer between splits, then a linear projection to the model width.
Models:
  1 joint space-time attention over all tokens;
  2 factorised encoder: a spatial encoder per time index, then a temporal encoder over the
    per-frame vectors;
  3 factorised self-attention: in each block attention over time, then over space, then MLP;
  4 factorised dot-product attention: Model 1's parameters, half of the heads attend over
    space and half over time.
Parameter names follow the VideoMAE encoder (``patch_embed.proj``, ``blocks.{i}.attn.qkv``,
``norm``), so Models 1 and 4 take a VideoMAE encoder as is, Model 3 takes it for its spatial
part, and Model 2 for its spatial encoder.

Input: (B, C, T, H, W), uint8 (normalised here) or float already normalised. Output: logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from pretrain.layers import Attention, Block, TubeletEmbed, sincos_table
from pretrain.model import PRESETS, ClipGeometry, channel_stats
from .classifier import ClipClassifier, init_linear_and_norm, registered_family
from .convert import inflate_kernel, split_qkv_bias
from .uniformer import ArmSpec, UniformerSpec
from .weights import by_name, format_report, geometry, load_checked, read_source

TOKENIZERS = ("tubelet", "uniform", "t2t")
VARIANTS = (1, 2, 3, 4)


@dataclass
class VivitConfig(ClipGeometry):
    """The `model` section of a fine-tuning recipe. Widths left at None come from ``preset``.

    ``family`` picks the model: ``vivit`` (this file), ``uniformer`` (the convolution-attention
    hybrid, ``finetune/uniformer.py``; geometry in the ``uniformer`` subsection) or
    ``uniformer_head`` (a ViT encoder armed with UniFormer's local and global relation blocks,
    ``finetune/uniformer_head.py``; the ViT fields below plus the ``arm`` subsection)."""
    family: str = "vivit"            # vivit | uniformer | uniformer_head
    variant: int = 1                 # ViViT model 1-4
    tokenizer: str = "tubelet"       # tubelet | uniform | t2t
    preset: str = "vit_b"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    temporal_depth: int = 4          # model 2: layers of the temporal encoder
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    num_classes: int = 0             # 0: taken from the data by the fine-tuning loop
    pool: str = "mean"               # mean (+ fc_norm) | cls
    norm_layout: str = "auto"        # tokens: norm on the tokens, pool, fc_norm (our export);
                                     # pooled: no token norm, fc_norm after pooling (official
                                     # fine-tuned files); auto: from --init
    drop_path: float = 0.1
    head_norm: str = "layer"         # the norm between the pooled feature and the head:
                                     # layer (fc_norm, a LayerNorm; VideoMAE) | batch (BatchNorm:
                                     # each feature standardised over the batch; for few labels,
                                     # docs/label-efficiency.md)
    dropout: float = 0.0             # before the head
    pos: str = "sincos"              # sincos (fixed, VideoMAE) | learned
    temporal_init: str = "zero"      # model 3: temporal attention zero-initialised or copied
    t2t_dim: int = 64                # t2t: width of the token transformer between splits
    t2t_kernels: tuple = ()          # t2t: ((k, s, p), ...), each an int or [t, h, w]
    mean: tuple | None = None
    std: tuple | None = None
    head_init_scale: float = 0.001
    uniformer: UniformerSpec = field(default_factory=UniformerSpec)
    arm: ArmSpec = field(default_factory=ArmSpec)

    def resolved(self) -> "VivitConfig":
        family = registered_family(self.family)  # a known family, or an error naming them
        if self.num_classes < 1:
            raise ValueError("model.num_classes must be set (the fine-tuning loop takes it from "
                             "the data when it is 0)")
        if self.head_norm not in ("layer", "batch"):
            raise ValueError(f"model.head_norm must be layer or batch, not {self.head_norm!r}")
        return family.resolve_config(self)

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.num_frames // self.tubelet_size, self.img_size // self.patch_size,
                self.img_size // self.patch_size)


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v, v)


# stride of one soft split -> (kernel, padding), as T2T-ViT's (7, 4, 2) and (3, 2, 1)
_SPLIT = {1: (1, 0), 2: (3, 1), 4: (7, 2)}


def _stride_steps(total: int) -> list[int]:
    steps = []
    if total >= 8 and total % 4 == 0:
        steps.append(4)
        total //= 4
    while total > 1 and total % 2 == 0:
        steps.append(2)
        total //= 2
    if total > 1:
        steps.append(total)
    return steps


def default_t2t_kernels(cfg: VivitConfig) -> list:
    """A soft-split schedule that reaches the tubelet tokeniser's grid: per axis the strides
    multiply to (t, p, p); a first (7, 4, 2) split where the spatial stride allows, then
    (3, 2, 1) splits, so 224^2 / 16 gives T2T-ViT's schedule and 28^3 / 4 gives (3, 2, 1) twice
    (7^3 tokens). Time is reduced in the last splits."""
    t, s = _stride_steps(cfg.tubelet_size), _stride_steps(cfg.patch_size)
    n = max(len(t), len(s), 2)
    t, s = [1] * (n - len(t)) + t, s + [1] * (n - len(s))
    out = []
    for ts, ss in zip(t, s):
        kt, pt = _SPLIT.get(ts, (ts, 0))
        ks, ps = _SPLIT.get(ss, (ss, 0))
        out.append(((kt, ks, ks), (ts, ss, ss), (pt, ps, ps)))
    return out


class UniformFrameEmbed(nn.Module):
    """Uniform frame sampling: every ``t``-th frame, each embedded with a 2D patch conv
    (a (1, p, p) Conv3d named ``proj``). (B, C, T, H, W) -> (B, T/t * H/p * W/p, D)."""

    def __init__(self, in_chans: int, embed_dim: int, every: int, patch: int):
        super().__init__()
        self.every, self.patch = every, patch
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(1, patch, patch),
                              stride=(1, patch, patch))

    def forward(self, x):
        return rearrange(self.proj(x[:, :, ::self.every]), "b d t h w -> b (t h w) d")


class T2TEmbed(nn.Module):
    """Tokens-to-token in 3D: soft split (overlapping unfold over T, H, W), a token transformer
    of width ``dim`` between splits, and a final linear projection to the model width."""

    def __init__(self, in_chans: int, embed_dim: int, kernels, dim: int = 64,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.kernels = [tuple(map(_triple, k)) for k in kernels]
        chans, self.reduce, self.blocks = in_chans, nn.ModuleList(), nn.ModuleList()
        for i, (k, s, p) in enumerate(self.kernels):
            width = chans * k[0] * k[1] * k[2]
            last = i == len(self.kernels) - 1
            self.reduce.append(nn.Linear(width, embed_dim if last else dim))
            if not last:
                self.blocks.append(Block(dim, 1, 1.0, norm_layer=partial(nn.LayerNorm,
                                                                          eps=norm_eps)))
            chans = dim

    @staticmethod
    def soft_split(x: torch.Tensor, k, s, p) -> tuple[torch.Tensor, tuple]:
        """(B, C, T, H, W) -> (B, N, C*kt*kh*kw) overlapping patches, and the new grid."""
        x = F.pad(x, (p[2], p[2], p[1], p[1], p[0], p[0]))
        x = x.unfold(2, k[0], s[0]).unfold(3, k[1], s[1]).unfold(4, k[2], s[2])
        grid = x.shape[2:5]
        return rearrange(x, "b c t h w i j l -> b (t h w) (c i j l)"), tuple(grid)

    def forward(self, x):
        for i, (k, s, p) in enumerate(self.kernels):
            tokens, grid = self.soft_split(x, k, s, p)
            tokens = self.reduce[i](tokens)
            if i < len(self.blocks):
                tokens = self.blocks[i](tokens)
                x = rearrange(tokens, "b (t h w) c -> b c t h w", t=grid[0], h=grid[1],
                              w=grid[2])
        return tokens


class FactorisedDotProductAttention(Attention):
    """Model 4: the parameters of joint attention; the first half of the heads attend over
    space (tokens of the same time index), the second half over time (tokens at the same
    spatial position); heads are concatenated before the output projection."""

    grid: tuple = (1, 1, 1)

    def forward(self, x):
        t, h, w = self.grid
        q, k, v = self.project_qkv(x)                      # (B, heads, N, d)
        half = self.num_heads // 2
        drop = self.attn_drop if self.training else 0.0

        def attend(q, k, v, pattern_in, pattern_out):
            q, k, v = (rearrange(z, pattern_in, t=t, h=h, w=w) for z in (q, k, v))
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            return rearrange(o, pattern_out, t=t, h=h, w=w)
        space = attend(q[:, :half], k[:, :half], v[:, :half],
                       "b e (t h w) d -> (b t) e (h w) d", "(b t) e (h w) d -> b e (t h w) d")
        time = attend(q[:, half:], k[:, half:], v[:, half:],
                      "b e (t h w) d -> (b h w) e t d", "(b h w) e t d -> b e (t h w) d")
        out = torch.cat([space, time], dim=1)
        return self.proj_drop(self.proj(rearrange(out, "b e n d -> b n (e d)")))


class FactorisedSelfAttentionBlock(Block):
    """Model 3: x + temporal_attn(temporal_norm(x)) over time, then the spatial block
    (norm1/attn over space, norm2/mlp) whose names match a VideoMAE block."""

    def __init__(self, dim, num_heads, grid, norm_layer, **kw):
        super().__init__(dim, num_heads, norm_layer=norm_layer, **kw)
        self.grid = grid
        self.temporal_norm = norm_layer(dim)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=kw.get("qkv_bias", True))

    def forward(self, x):
        t, h, w = self.grid
        xt = rearrange(x, "b (t h w) d -> (b h w) t d", t=t, h=h, w=w)
        xt = xt + self.drop_path(self.temporal_attn(self.temporal_norm(xt)))
        xs = rearrange(xt, "(b h w) t d -> (b t) (h w) d", h=h, w=w)
        xs = xs + self.drop_path(self.attn(self.norm1(xs)))
        x = rearrange(xs, "(b t) n d -> b (t n) d", t=t)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViViT(ClipClassifier):
    family = "vivit"
    token_grid = True                # its tokens after the last block and norm

    @staticmethod
    def resolve_config(cfg: VivitConfig) -> VivitConfig:
        """The ViT fields checked, and widths and input statistics filled in from the preset."""
        if cfg.preset not in PRESETS:
            raise ValueError(f"model.preset {cfg.preset!r} is not one of {sorted(PRESETS)}")
        if cfg.variant not in VARIANTS:
            raise ValueError(f"model.variant must be 1, 2, 3 or 4, not {cfg.variant}")
        if cfg.tokenizer not in TOKENIZERS:
            raise ValueError(f"model.tokenizer must be one of {TOKENIZERS}")
        if cfg.pool not in ("mean", "cls"):
            raise ValueError("model.pool must be mean or cls")
        if cfg.norm_layout not in ("auto", "tokens", "pooled"):
            raise ValueError("model.norm_layout must be auto, tokens or pooled")
        if cfg.norm_layout == "pooled" and cfg.pool != "mean":
            raise ValueError("model.norm_layout=pooled is the mean-pooling layout; use pool=mean")
        if cfg.pool == "cls" and cfg.variant in (3, 4):
            raise ValueError("model.pool=cls is for models 1 and 2: the factorised attention of "
                             "models 3 and 4 runs over the token grid; use pool=mean")
        d, depth, heads = PRESETS[cfg.preset][:3]
        mean, std = channel_stats(cfg.in_chans, cfg.mean, cfg.std)
        kernels = cfg.t2t_kernels or default_t2t_kernels(cfg)
        return replace(cfg, embed_dim=cfg.embed_dim or d, depth=cfg.depth or depth,
                       num_heads=cfg.num_heads or heads, mean=mean, std=std,
                       t2t_kernels=tuple(tuple(_triple(v) for v in k) for k in kernels))

    def __init__(self, cfg: VivitConfig):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        d, grid = cfg.embed_dim, cfg.grid
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        if cfg.tokenizer == "tubelet":
            self.patch_embed = TubeletEmbed(cfg.in_chans, d, cfg.tubelet_size, cfg.patch_size)
        elif cfg.tokenizer == "uniform":
            self.patch_embed = UniformFrameEmbed(cfg.in_chans, d, cfg.tubelet_size,
                                                 cfg.patch_size)
        else:
            self.patch_embed = T2TEmbed(cfg.in_chans, d, cfg.t2t_kernels, cfg.t2t_dim,
                                        cfg.norm_eps)
        n = grid[0] * grid[1] * grid[2]
        if cfg.pos == "learned":
            self.pos_embed = nn.Parameter(sincos_table(n, d)[None].clone())
        else:
            self.register_buffer("pos_embed", sincos_table(n, d)[None], persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "cls" else None
        rates = torch.linspace(0, cfg.drop_path, cfg.depth + (cfg.temporal_depth
                                                              if cfg.variant == 2 else 0))
        rates = rates.tolist()
        common = dict(mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias)
        if cfg.variant == 3:
            self.blocks = nn.ModuleList([FactorisedSelfAttentionBlock(
                d, cfg.num_heads, grid, norm, drop_path=rates[i], **common)
                for i in range(cfg.depth)])
        else:
            attn = Attention
            if cfg.variant == 4:
                if cfg.num_heads < 2:
                    raise ValueError("model 4 needs at least 2 heads (half space, half time)")
                attn = type("FDPA", (FactorisedDotProductAttention,), {"grid": grid})
            self.blocks = nn.ModuleList([Block(d, cfg.num_heads, norm_layer=norm,
                                               drop_path=rates[i], attn_layer=attn, **common)
                                         for i in range(cfg.depth)])
        if cfg.variant == 2:
            self.temporal_cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "cls" else None
            self.register_buffer("temporal_pos", sincos_table(grid[0], d)[None],
                                 persistent=False)
            self.temporal_blocks = nn.ModuleList([
                Block(d, cfg.num_heads, norm_layer=norm, drop_path=rates[cfg.depth + i],
                      **common) for i in range(cfg.temporal_depth)])
            self.temporal_norm = norm(d)
        # official fine-tuned VideoMAE: norm = Identity, fc_norm after pooling
        self.norm = nn.Identity() if cfg.norm_layout == "pooled" else norm(d)
        if cfg.head_norm == "batch":
            self.fc_norm = nn.BatchNorm1d(d, eps=cfg.norm_eps)
        else:
            self.fc_norm = norm(d) if cfg.pool == "mean" else nn.Identity()
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(d, cfg.num_classes)
        self.set_input_stats(cfg.mean, cfg.std)
        self._init_weights()

    def _init_weights(self):
        init_linear_and_norm(self)
        for tok in (self.cls_token, getattr(self, "temporal_cls", None)):
            if tok is not None:
                nn.init.trunc_normal_(tok, std=0.02)
        self.scale_head(self.cfg.head_init_scale)
        if self.cfg.variant == 3:
            for blk in self.blocks:
                init_temporal_attention(blk, self.cfg.temporal_init)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, D) tokens with positions (before any block)."""
        x = self.patch_embed(self.normalize(x))
        return x + self.pos_embed.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Token features after the last block and ``norm``: (B, N, D), or (B, T', D) of the
        temporal encoder for Model 2. For Model 1 with a VideoMAE encoder's weights this is
        exactly that encoder's output."""
        x = self.tokens(x)
        b = x.shape[0]
        t, h, w = self.cfg.grid
        if self.cfg.variant == 2:
            x = rearrange(x, "b (t n) d -> (b t) n d", t=t)
            x = self._run(self.blocks, x, self.cls_token)
            x = self.norm(x)
            frame = x[:, 0] if self.cls_token is not None else x.mean(1)
            x = rearrange(frame, "(b t) d -> b t d", b=b) + self.temporal_pos.to(x.dtype)
            x = self._run(self.temporal_blocks, x, getattr(self, "temporal_cls", None))
            return self.temporal_norm(x)
        return self.norm(self._run(self.blocks, x, self.cls_token))

    def _run(self, blocks, x, cls):
        if cls is not None:
            x = torch.cat([cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for blk in blocks:
            x = blk(x)
        return x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, D): the class token or the mean token, before ``fc_norm``."""
        f = self.forward_features(x)
        return f[:, 0] if self.cfg.pool == "cls" else f.mean(1)

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.fc_norm(f)))

    @property
    def num_layers(self) -> int:
        return self.cfg.depth + (self.cfg.temporal_depth if self.cfg.variant == 2 else 0)

    def layer_id(self, name: str) -> int:
        return layer_id(name, self.cfg)

    def describe(self) -> str:
        return f"ViViT model {self.cfg.variant}, {self.cfg.tokenizer} tokens"

    def load_init(self, path: str, kernel_init: str, verbose: bool,
                  allow_partial: bool) -> dict:
        return init_vit(self, path, kernel_init, verbose, allow_partial)


def init_temporal_attention(blk: FactorisedSelfAttentionBlock, how: str):
    """Model 3's temporal attention: 'zero' (output projection zero: the block starts as the
    spatial block) or 'copy' (the spatial attention's weights, as scenic does)."""
    if how == "zero":
        nn.init.zeros_(blk.temporal_attn.proj.weight)
        nn.init.zeros_(blk.temporal_attn.proj.bias)
    elif how == "copy":
        blk.temporal_attn.load_state_dict(blk.attn.state_dict())
        blk.temporal_norm.load_state_dict(blk.norm1.state_dict())
    else:
        raise ValueError(f"model.temporal_init must be zero or copy, not {how!r}")


def layer_id(name: str, cfg: VivitConfig) -> int:
    """Depth of a parameter for layer-wise lr decay: embeddings 0, block i -> i + 1, temporal
    block j (model 2) -> depth + 1 + j, the rest (norms, head) last."""
    n_layers = cfg.depth + (cfg.temporal_depth if cfg.variant == 2 else 0)
    if name.startswith(("patch_embed", "pos_embed", "cls_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith("temporal_blocks."):
        return cfg.depth + 1 + int(name.split(".")[1])
    if name.startswith("temporal_cls"):
        return cfg.depth + 1
    return n_layers + 1


# -- init from a ViT encoder (the generic part is finetune/weights.py) ----------------------
def _image_vit_to_encoder(sd: dict, model: ViViT, kernel_init: str, report: dict) -> dict:
    cfg = model.cfg
    out = {}
    for k, v in sd.items():
        split = split_qkv_bias(k, v)
        if split:
            out.update(split)
            report["notes"].append("dropped the key bias of the fused qkv (softmax ignores it)")
        elif k == "patch_embed.proj.weight":
            t = cfg.tubelet_size if cfg.tokenizer == "tubelet" else 1
            out[k] = v[:, :, None] if t == 1 else inflate_kernel(v, t, kernel_init)
        elif k == "pos_embed":
            if cfg.pos != "learned":
                report["unused"].append(k + " (the model uses the fixed sine-cosine table)")
                continue
            t, h, w = cfg.grid
            grid = v[:, 1:] if v.shape[1] != int(v.shape[1] ** 0.5) ** 2 else v
            side = int(grid.shape[1] ** 0.5)
            img = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            img = F.interpolate(img.float(), size=(h, w), mode="bicubic", align_corners=False)
            out[k] = repeat(img[0], "d h w -> 1 (t h w) d", t=t).to(v.dtype)
        elif k in ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"):
            report["unused"].append(k)
        else:
            out[k] = v
    return out


def _tubelet_to_uniform(w: torch.Tensor) -> torch.Tensor:
    """(D, C, t, p, p) -> (D, C, 1, p, p): summed over time (same response to a still clip)."""
    return w.sum(dim=2, keepdim=True)


def init_vit(model: ViViT, path: str, kernel_init: str = "central", verbose: bool = True,
             allow_partial: bool = False) -> dict:
    """A ViViT (or the armed encoder, whose added blocks start new) from a ViT: our export, an
    official or HuggingFace VideoMAE checkpoint (pre-trained or fine-tuned), or an image ViT
    (2D kernels inflated with ``kernel_init``)."""
    sd, kind, dropped = read_source(path)
    report = {"source": path, "kind": kind, "loaded": [], "new": [],
              "unused": [f"{k} (not part of the encoder)" for k in sorted(dropped)],
              "mismatched": [], "notes": []}
    if kind == "image ViT":
        sd = _image_vit_to_encoder(sd, model, kernel_init, report)
    target = model.state_dict()
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 5 and model.cfg.tokenizer == "uniform" and w.shape[2] != 1:
        sd["patch_embed.proj.weight"] = _tubelet_to_uniform(w)
        report["notes"].append("tubelet kernel summed over time for uniform frame sampling")
    if model.cfg.tokenizer == "t2t":
        report["notes"].append("the T2T tokeniser starts new (no pre-trained counterpart)")
    load = {}
    for k, v in dropped.items():  # a fine-tuned file's pooled-feature norm and head
        if k.startswith("fc_norm.") and not isinstance(getattr(model, "fc_norm", None),
                                                       torch.nn.LayerNorm):
            report["unused"] = [f"{k} (a LayerNorm's; model.head_norm=batch starts its "
                                f"BatchNorm new)" if u.startswith(k + " ") else u
                                for u in report["unused"]]
            continue
        if k.startswith(("fc_norm.", "head.")) and k in target and target[k].shape == v.shape:
            load[k] = v.to(target[k].dtype)
            report["unused"] = [u for u in report["unused"] if not u.startswith(k + " ")]
    load.update(by_name(sd, target, report))
    # The encoder weights this model can take from a pre-trained encoder (not the parts that
    # always start new: Model 3's temporal attention, the T2T tokeniser).
    core = [k for k in target if k.startswith(("blocks.", "patch_embed.")) and
            "temporal_" not in k and not (model.cfg.tokenizer == "t2t" and
                                          k.startswith("patch_embed."))]
    load_checked(model, load, core, report, allow_partial, lambda taken: (
        f"--init {path} fits {taken} of the {len(core)} encoder weights of this model: its "
        f"encoder has {geometry(sd)}, the model has {geometry(target)}. Choose the "
        f"model.preset / geometry the encoder was trained with, or set "
        f"run.init_partial=true to load what fits and train the rest from scratch"))
    if model.cfg.variant == 3 and model.cfg.temporal_init == "copy":
        for blk in model.blocks:
            if isinstance(blk, FactorisedSelfAttentionBlock):
                init_temporal_attention(blk, "copy")
        report["notes"].append("temporal attention copied from the loaded spatial attention")
    if verbose:
        print(format_report(report))
    return report
