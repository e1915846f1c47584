"""UniFormer (Li et al. 2022): convolution in the shallow stages, self-attention in the deep ones.

Four stages, LLGG: stages 1-2 are local blocks, 3-4 global blocks. Every block starts with a
dynamic position embedding (DPE, ``x + DWConv 3x3x3(x)``).
  local   x + DPE; x + PW(DW 5x5x5(PW(BN(x)))) (local MHRA); x + PW-MLP(BN(x))
  global  x + DPE; then a pre-norm transformer block (``pretrain.layers.Block``: LN-MHSA, LN-MLP)
          over the flattened T*H*W tokens
Each stage begins with a patch embedding (conv + LayerNorm over channels). Head: BN, global
average pool, dropout, linear. Parameter names follow the published checkpoints
(``patch_embed{1-4}``, ``blocks{1-4}.{i}``, ``norm``, ``head``); the attention keeps the
VideoMAE layout (``q_bias``/``v_bias``), and a published fused ``qkv.bias`` loses its key part on
import (softmax ignores it).

Geometry comes from the config: the published video stem is a Conv3d k(3,4,4) s(2,4,4) p(1,0,0)
and each later stage halves H and W (k = s = (1,2,2)); volumes of 28^3 need a gentler stem
(see ``launch/configs/finetune/medmnist3d_uniformer.yaml``).

The same code builds the 2D image model (``spatial_dims=2``: Conv2d, BatchNorm2d), which is what
a published ImageNet UniFormer checkpoint holds; ``inflate`` turns its weights into the 3D ones.

``temporal_padding``: ``zeros`` is the published model (every temporal conv zero-pads);
``replicate`` pads time with the edge frames instead (space still zero-pads). A 2D checkpoint
inflated by averaging gives exactly the 2D model's logits on a clip of one repeated frame with
replicate padding; with zeros the first and last frames see the padding and differ. Central
inflation (the 2D kernel in the middle frame) never reaches the padding: exact either way.

Input: (B, C, T, H, W), uint8 (normalised here) or float already normalised. Output: logits.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .convert import inflate_kernel, split_qkv_bias
from pretrain.convert import read_state_dict
from pretrain.layers import BatchNorm2d, BatchNorm3d, Block, DropPath
from .classifier import ClipClassifier, init_linear_and_norm
from .weights import InitMismatch, by_name, format_report, load_checked

# name -> (dims, depths, head_dim); S and B as published, tiny for tests and the quick start
UNIFORMER_PRESETS = {
    "uniformer_tiny": ((32, 64, 128, 256), (1, 1, 2, 1), 32),
    "uniformer_s": ((64, 128, 320, 512), (3, 4, 8, 3), 64),
    "uniformer_b": ((64, 128, 320, 512), (5, 8, 20, 7), 64),
}
VIDEO_STEM = ((3, 4, 4), (2, 4, 4), (1, 0, 0))
VIDEO_DOWNSAMPLE = (((1, 2, 2), (1, 2, 2), (0, 0, 0)),) * 3


@dataclass
class UniformerSpec:
    """The ``model.uniformer`` section: what the preset does not fix. Empty = preset/published."""
    dims: tuple = ()                  # 4 stage widths
    depths: tuple = ()                # 4 stage depths
    head_dim: int = 0                 # attention head width in stages 3-4
    mlp_ratio: float = 4.0
    local_kernel: int = 5             # local MHRA depth-wise kernel
    stem: tuple = ()                  # (kernel, stride, padding), each an int or [t, h, w]
    downsample: tuple = ()            # 3 x (kernel, stride, padding) for stages 2-4
    temporal_padding: str = "zeros"   # zeros (published) | replicate (exact 2D inflation)


@dataclass
class ArmSpec:
    """The ``model.arm`` section of ``family: uniformer_head`` (``finetune/uniformer_head.py``)."""
    local: bool = True                # local temporal MHRA before every block's attention
    local_ratio: float = 1.5          # its bottleneck: width / ratio channels
    local_kernel: int = 3             # its depth-wise temporal kernel
    global_layers: int = 4            # global UniBlocks reading the last N encoder layers
    global_mlp_ratio: float = 4.0


def _triple(v) -> tuple[int, int, int]:
    return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else (int(v),) * 3


def _layer(spec) -> tuple:
    if len(spec) != 3:
        raise ValueError(f"a stem/downsample entry is (kernel, stride, padding), got {spec!r}")
    return tuple(_triple(v) for v in spec)


def resolve_uniformer(cfg) -> "UniformerSpec":
    """The full spec of ``cfg`` (a fine-tuning model config with family uniformer)."""
    if cfg.preset not in UNIFORMER_PRESETS:
        raise ValueError(f"model.preset {cfg.preset!r} is not a UniFormer preset; choose one of "
                         f"{sorted(UNIFORMER_PRESETS)}")
    dims, depths, head_dim = UNIFORMER_PRESETS[cfg.preset]
    u = cfg.uniformer
    u = replace(u, dims=tuple(u.dims) or dims, depths=tuple(u.depths) or depths,
                head_dim=u.head_dim or head_dim,
                stem=_layer(u.stem or VIDEO_STEM),
                downsample=tuple(_layer(d) for d in (u.downsample or VIDEO_DOWNSAMPLE)))
    if len(u.dims) != 4 or len(u.depths) != 4 or len(u.downsample) != 3:
        raise ValueError("model.uniformer needs 4 dims, 4 depths and 3 downsample entries")
    for d in u.dims[2:]:
        if d % u.head_dim:
            raise ValueError(f"model.uniformer.head_dim={u.head_dim} does not divide width {d}")
    if u.temporal_padding not in ("zeros", "replicate"):
        raise ValueError("model.uniformer.temporal_padding must be zeros or replicate")
    return u


def stage_grids(cfg, spec: UniformerSpec) -> list[tuple[int, int, int]]:
    """The (T, H, W) token grid of each stage for the configured input."""
    grid = (cfg.num_frames, cfg.img_size, cfg.img_size)
    out = []
    for k, s, p in (spec.stem, *spec.downsample):
        grid = tuple((g + 2 * pp - kk) // ss + 1 for g, kk, ss, pp in zip(grid, k, s, p))
        if min(grid) < 1:
            raise ValueError(f"the UniFormer stem/downsampling leaves no tokens for a "
                             f"{cfg.num_frames}x{cfg.img_size}^2 input; set model.uniformer.stem "
                             f"and .downsample for this size")
        out.append(grid)
    return out


class TimePadConv3d(nn.Conv3d):
    """A Conv3d whose time axis is padded with the edge frames (space keeps zero padding)."""

    def __init__(self, *args, tpad: int = 0, **kw):
        super().__init__(*args, **kw)
        self.tpad = tpad

    def forward(self, x):
        return super().forward(F.pad(x, (0, 0, 0, 0, self.tpad, self.tpad), mode="replicate"))


def Conv(nd: int, cin: int, cout: int, kernel, stride=1, padding=0, groups=1,
         temporal_padding: str = "zeros") -> nn.Module:
    """A 2D (``nd=2``, the image model) or 3D convolution with parameters ``weight``/``bias``;
    in 3D with ``replicate`` the temporal padding repeats the edge frames."""
    k, s, p = _triple(kernel), _triple(stride), _triple(padding)
    if nd == 2:
        return nn.Conv2d(cin, cout, k[1:], stride=s[1:], padding=p[1:], groups=groups)
    if temporal_padding == "replicate" and p[0]:
        return TimePadConv3d(cin, cout, k, stride=s, padding=(0, *p[1:]), groups=groups,
                             tpad=p[0])
    return nn.Conv3d(cin, cout, k, stride=s, padding=p, groups=groups)


def _bn(nd: int, dim: int) -> nn.Module:
    return BatchNorm3d(dim) if nd == 3 else BatchNorm2d(dim)


class ConvMlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv over channels (the local block's MLP)."""

    def __init__(self, nd: int, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Conv(nd, dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = Conv(nd, hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LocalBlock(nn.Module):
    """DPE, local MHRA (BN, PW, DW kxkxk, PW) and a BN + PW-MLP, each residual."""

    def __init__(self, nd: int, dim: int, mlp_ratio: float, kernel: int, drop_path: float,
                 tpad: str):
        super().__init__()
        self.pos_embed = Conv(nd, dim, dim, 3, padding=1, groups=dim, temporal_padding=tpad)
        self.norm1 = _bn(nd, dim)
        self.conv1 = Conv(nd, dim, dim, 1)
        self.attn = Conv(nd, dim, dim, kernel, padding=kernel // 2, groups=dim,
                         temporal_padding=tpad)
        self.conv2 = Conv(nd, dim, dim, 1)
        self.drop_path = DropPath(drop_path)
        self.norm2 = _bn(nd, dim)
        self.mlp = ConvMlp(nd, dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GlobalBlock(Block):
    """DPE, then the shared pre-norm transformer block over all T*H*W tokens."""

    def __init__(self, nd: int, dim: int, heads: int, mlp_ratio: float, drop_path: float,
                 tpad: str):
        super().__init__(dim, heads, mlp_ratio, qkv_bias=True, drop_path=drop_path)
        self.pos_embed = Conv(nd, dim, dim, 3, padding=1, groups=dim, temporal_padding=tpad)

    def forward(self, x):
        x = x + self.pos_embed(x)
        shape = x.shape
        tokens = super().forward(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(shape)


class PatchEmbed(nn.Module):
    """Conv (kernel, stride, padding) then LayerNorm over channels."""

    def __init__(self, nd: int, cin: int, cout: int, layer, tpad: str):
        super().__init__()
        k, s, p = layer
        self.proj = Conv(nd, cin, cout, k, s, p, temporal_padding=tpad)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x):
        x = self.proj(x)
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class UniFormer(ClipClassifier):
    """The UniFormer classifier. ``cfg`` is the fine-tuning model config (family uniformer);
    ``spatial_dims=2`` builds the image model of the same widths (the 2D checkpoint layout)."""

    family = "uniformer"
    default_kernel_init = "average"   # an image UniFormer's kernels, averaged over time
    takes_vit_encoder = False

    @staticmethod
    def resolve_config(cfg):
        """The ``uniformer`` subsection resolved from the preset, and the input statistics."""
        from pretrain.model import channel_stats
        if cfg.head_norm != "layer":
            raise ValueError("model.head_norm=batch is for families vivit and uniformer_head; "
                             "UniFormer pools its own normed features")
        mean, std = channel_stats(cfg.in_chans, cfg.mean, cfg.std)
        return replace(cfg, uniformer=resolve_uniformer(cfg), mean=mean, std=std)

    def __init__(self, cfg, spatial_dims: int = 3):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        spec = cfg.uniformer
        self.spec, nd = spec, spatial_dims
        if nd == 3:
            stage_grids(cfg, spec)
        tpad = spec.temporal_padding
        rates = torch.linspace(0, cfg.drop_path, sum(spec.depths)).tolist()
        chans, start = cfg.in_chans, 0
        for s, (dim, depth) in enumerate(zip(spec.dims, spec.depths), 1):
            layer = spec.stem if s == 1 else spec.downsample[s - 2]
            setattr(self, f"patch_embed{s}", PatchEmbed(nd, chans, dim, layer, tpad))
            if s <= 2:
                blocks = [LocalBlock(nd, dim, spec.mlp_ratio, spec.local_kernel,
                                     rates[start + i], tpad) for i in range(depth)]
            else:
                blocks = [GlobalBlock(nd, dim, dim // spec.head_dim, spec.mlp_ratio,
                                      rates[start + i], tpad) for i in range(depth)]
            setattr(self, f"blocks{s}", nn.ModuleList(blocks))
            chans, start = dim, start + depth
        self.norm = _bn(nd, chans)
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(chans, cfg.num_classes)
        self.set_input_stats(cfg.mean, cfg.std, nd)
        init_linear_and_norm(self)
        self.scale_head(cfg.head_init_scale)

    def stages(self):
        for s in range(1, 5):
            yield getattr(self, f"patch_embed{s}"), getattr(self, f"blocks{s}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, [T,] H, W) -> the last stage's feature map after ``norm``."""
        x = self.normalize(x)
        for embed, blocks in self.stages():
            x = embed(x)
            for blk in blocks:
                x = blk(x)
        return self.norm(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, [T,] H, W) -> (B, D): the last stage's normed map, averaged over positions."""
        return self.forward_features(x).flatten(2).mean(-1)

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(f))

    @property
    def num_layers(self) -> int:
        return sum(self.cfg.uniformer.depths)

    def layer_id(self, name: str) -> int:
        return layer_id(name, self.cfg.uniformer)

    def describe(self) -> str:
        u = self.cfg.uniformer
        return f"UniFormer {self.cfg.preset} (dims {list(u.dims)}, depths {list(u.depths)})"

    def load_init(self, path: str, kernel_init: str, verbose: bool,
                  allow_partial: bool) -> dict:
        return init_uniformer(self, path, kernel_init, verbose, allow_partial)


def layer_id(name: str, spec: UniformerSpec) -> int:
    """Depth of a parameter for layer-wise lr decay: the stem 0, the j-th block of stage s its
    position over all blocks + 1, a stage's downsampling with that stage's first block, norm and
    head last."""
    starts = [0]
    for d in spec.depths:
        starts.append(starts[-1] + d)
    parts = name.split(".")
    if parts[0] == "patch_embed1":
        return 0
    if parts[0].startswith("patch_embed"):
        return starts[int(parts[0][-1]) - 1] + 1
    if parts[0].startswith("blocks"):
        return starts[int(parts[0][-1]) - 1] + int(parts[1]) + 1
    return starts[-1] + 1


def inflate(sd2d: dict, model: UniFormer, how: str = "average") -> tuple[dict, list]:
    """A 2D (image) UniFormer state dict in the published layout -> the video model's names and
    shapes, and notes. Each 2D kernel (O, I, h, w) becomes (O, I, t, h, w): ``average`` repeats
    it over the model's t and divides by t, ``central`` puts it in the middle frame (zeros
    elsewhere); both give the 2D response on a still clip. A 3-channel stem feeding a
    1-channel model is summed over colour (a grey image in RGB gives the same response). A
    fused ``qkv.bias`` keeps its query and value parts."""
    if how not in ("average", "central"):
        raise ValueError(f"kernel init must be central or average, not {how!r}")
    target = model.state_dict()
    out, notes = {}, []
    for k, v in sd2d.items():
        split = split_qkv_bias(k, v)
        if split:
            out.update(split)
            notes.append("dropped the key bias of the fused qkv (softmax ignores it)")
            continue
        want = target.get(k)
        if v.ndim == 4 and want is not None and want.ndim == 5:
            if k == "patch_embed1.proj.weight" and v.shape[1] == 3 and want.shape[1] == 1:
                v = v.sum(dim=1, keepdim=True)
                notes.append("3-channel stem summed over colour for the 1-channel input")
            v = inflate_kernel(v, want.shape[2], how)
            notes.append(f"2D kernels inflated over time ({how})")
        out[k] = v
    return out, notes


def init_uniformer(model, path: str, kernel_init: str = "average", verbose: bool = True,
                   allow_partial: bool = False) -> dict:
    """A UniFormer from a UniFormer checkpoint: a 2D image one (published image layout, kernels
    inflated with ``kernel_init``) or a video one (ours or published), loaded by name."""
    if os.path.isdir(path) or path.endswith("encoder.safetensors"):
        raise InitMismatch(f"--init {path} is a ViT encoder; a ViT encoder initialises "
                           f"model.family=uniformer_head (the encoder armed with UniFormer "
                           f"blocks) or vivit, not the UniFormer itself")
    sd = read_state_dict(path)
    stem = sd.get("patch_embed1.proj.weight")
    if stem is None:
        kind = "VideoMAE / ViT" if "patch_embed.proj.weight" in sd or any(
            k.startswith(("encoder.", "videomae.")) for k in sd) else "unknown"
        raise InitMismatch(f"--init {path} holds no UniFormer (no patch_embed1.proj.weight; "
                           f"looks like {kind}). A ViT encoder initialises "
                           f"model.family=uniformer_head or vivit")
    report = {"source": path, "kind": "UniFormer", "loaded": [], "new": [], "unused": [],
              "mismatched": [], "notes": []}
    if stem.ndim == 4:
        report["kind"] = "image UniFormer (2D)"
        sd, notes = inflate(sd, model, kernel_init)
        report["notes"] += notes
    else:
        sd = dict(pair for k, v in sd.items() for pair in split_qkv_bias(k, v) or [(k, v)])
    target = model.state_dict()
    load = by_name(sd, target, report)
    core = [k for k in target if k.startswith(("blocks", "patch_embed"))]
    load_checked(model, load, core, report, allow_partial, lambda taken: (
        f"--init {path} fits {taken} of the {len(core)} stage weights of this UniFormer "
        f"({model.cfg.preset}, dims {list(model.cfg.uniformer.dims)}, depths "
        f"{list(model.cfg.uniformer.depths)}, {model.cfg.in_chans} channel(s)). Choose the "
        f"preset the checkpoint was trained with, or set run.init_partial=true"))
    if verbose:
        print(format_report(report))
    return report
