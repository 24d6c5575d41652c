"""DINOv3 ViT image encoder, loading the Hugging Face ``facebook/dinov3-vitl16-pretrain-lvd1689m`` weights.

TRELLIS.2 conditions every flow model on the DINOv3 tokens of the input image (spec models.md 9.2):
all tokens (CLS, 4 registers, patches) of the last layer, normalised by a non-affine LayerNorm
(eps 1e-5) instead of the model's own affine final norm. `DINOv3ViT.forward` returns exactly those tokens:
``(B, 5 + (H/16)(W/16), 1024)``, i.e. 1029 tokens at 512 px and 4101 at 1024 px.

Architecture (ViT-L/16): patch conv 16x16 -> ``[CLS, registers, patches]`` -> 24 pre-norm layers
``x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x))``. Attention has q/v/o biases but no k bias and
applies 2-D RoPE (theta 100, rotate-half pairing) to patch tokens only; patch centres are normalised to
``[-1, 1]`` as ``(y, x)``. The MLP uses exact (erf) GELU. Everything runs in float32.

Keys (HF layout): ``embeddings.{cls_token, mask_token, register_tokens, patch_embeddings.*}``,
``layer.{i}.{norm1, attention.{q,k,v,o}_proj, layer_scale1.lambda1, norm2, mlp.{up,down}_proj,
layer_scale2.lambda1}.*``, ``norm.*`` (loaded, unused by TRELLIS.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DINOv3Config:
    """The fields of the HF ``config.json`` this encoder uses; defaults are ViT-L/16."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 16
    num_channels: int = 3
    num_register_tokens: int = 4
    layer_norm_eps: float = 1e-5
    rope_theta: float = 100.0
    layerscale_value: float = 1.0
    query_bias: bool = True
    key_bias: bool = False
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError(f"hidden_size={self.hidden_size} / num_attention_heads={self.num_attention_heads} "
                             "must give a head dim divisible by 4 (2-D RoPE splits it into y and x halves)")

    @classmethod
    def from_hf_config(cls, hf: dict, source: str = "config.json") -> "DINOv3Config":
        """Read an HF ``config.json`` dict; other ViT variants (gated MLP, other activations) are rejected.

        Raises:
            ValueError: wrong ``model_type``, or an architecture option this module does not implement.
        """
        if hf.get("model_type") != "dinov3_vit":
            raise ValueError(f"{source}: model_type must be 'dinov3_vit', got {hf.get('model_type')!r}")
        if hf.get("use_gated_mlp", False) or hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{source}: only the plain GELU MLP (ViT-S/B/L) is supported, got "
                             f"use_gated_mlp={hf.get('use_gated_mlp')}, hidden_act={hf.get('hidden_act')!r}")
        patch = hf.get("patch_size", cls.patch_size)
        if isinstance(patch, (list, tuple)):
            if len(set(patch)) != 1:
                raise ValueError(f"{source}: non-square patch_size {patch} is not supported")
            patch = patch[0]
        names = [f for f in cls.__dataclass_fields__ if f != "patch_size"]
        return cls(patch_size=int(patch), **{k: hf[k] for k in names if k in hf})

    def to_hf_config(self) -> dict:
        """The HF ``config.json`` content for this configuration."""
        return {"model_type": "dinov3_vit", "architectures": ["DINOv3ViTModel"], "hidden_act": "gelu",
                "use_gated_mlp": False, **self.__dict__}


class DINOv3Embeddings(nn.Module):
    def __init__(self, cfg: DINOv3Config) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.cls_token = nn.Parameter(torch.randn(1, 1, c) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c))  # used only by masked-image training
        self.register_tokens = nn.Parameter(torch.randn(1, cfg.num_register_tokens, c) * 0.02)
        self.patch_embeddings = nn.Conv2d(cfg.num_channels, c, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1 + R + P, C)
        patches = self.patch_embeddings(images).flatten(2).transpose(1, 2)  # row-major patch order
        batch = images.shape[0]
        return torch.cat([self.cls_token.expand(batch, -1, -1),
                          self.register_tokens.expand(batch, -1, -1), patches], dim=1)


def patch_rope(rows: int, cols: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(rows*cols, head_dim) float32`` of DINOv3's 2-D RoPE (spec 9.2 step 4)."""
    centres_y = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) / rows
    centres_x = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) / cols
    grid = torch.stack(torch.meshgrid(centres_y, centres_x, indexing="ij"), dim=-1).reshape(-1, 2)
    grid = 2.0 * grid - 1.0  # (P, 2) as (y, x) in [-1, 1]
    inv_freq = 1.0 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32, device=device)
    angles = (2 * math.pi * grid[:, :, None] * inv_freq).flatten(1).tile(2)  # [y(D/4), x(D/4)] twice
    return torch.cos(angles), torch.sin(angles)


def _rotate_half_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Pairs channel i with i + D/2 ("rotate half"), unlike the flow models' adjacent pairs.
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class DINOv3Attention(nn.Module):
    def __init__(self, cfg: DINOv3Config) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(c, c, bias=cfg.query_bias)
        self.k_proj = nn.Linear(c, c, bias=cfg.key_bias)
        self.v_proj = nn.Linear(c, c, bias=cfg.value_bias)
        self.o_proj = nn.Linear(c, c, bias=cfg.proj_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x (B, T, C); cos/sin (P, D) for the last P tokens (patches; the prefix tokens are not rotated)
        q, k, v = (proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, T, D)
        prefix = x.shape[1] - cos.shape[0]
        q = torch.cat([q[:, :, :prefix], _rotate_half_rope(q[:, :, prefix:], cos, sin)], dim=2)
        k = torch.cat([k[:, :, :prefix], _rotate_half_rope(k[:, :, prefix:], cos, sin)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class LayerScale(nn.Module):
    def __init__(self, channels: int, value: float) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((channels,), float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class DINOv3Mlp(nn.Module):
    def __init__(self, cfg: DINOv3Config) -> None:
        super().__init__()
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))  # exact erf GELU


class DINOv3Layer(nn.Module):
    def __init__(self, cfg: DINOv3Config) -> None:
        super().__init__()
        c, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.norm1 = nn.LayerNorm(c, eps=eps)
        self.attention = DINOv3Attention(cfg)
        self.layer_scale1 = LayerScale(c, cfg.layerscale_value)
        self.norm2 = nn.LayerNorm(c, eps=eps)
        self.mlp = DINOv3Mlp(cfg)
        self.layer_scale2 = LayerScale(c, cfg.layerscale_value)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x), cos, sin))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class DINOv3ViT(nn.Module):
    """DINOv3 ViT returning TRELLIS.2's conditioning tokens (see the module docstring).

    Load the released weights with ``omnivox.models.from_pretrained(<folder with config.json and
    model.safetensors>)``.
    """

    def __init__(self, config: DINOv3Config) -> None:
        super().__init__()
        self.config = config
        self.embeddings = DINOv3Embeddings(config)
        self.layer = nn.ModuleList(DINOv3Layer(config) for _ in range(config.num_hidden_layers))
        # The model's own final norm: kept so the checkpoint loads strictly; TRELLIS.2 does not use it.
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def last_hidden_state(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the last layer, before any final norm.

        Args:
            images: ``(B, 3, H, W)`` float, ImageNet-normalised; ``H`` and ``W`` multiples of the patch size.

        Returns:
            ``(B, 1 + registers + (H/p)(W/p), hidden_size)`` in the parameters' dtype.
        """
        p = self.config.patch_size
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != self.config.num_channels:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must have shape (B, {self.config.num_channels}, H, W), got {got}")
        if images.shape[2] % p or images.shape[3] % p:
            raise ValueError(f"image height and width must be multiples of {p}, got {tuple(images.shape[2:])}")
        dtype = self.embeddings.patch_embeddings.weight.dtype
        x = self.embeddings(images.to(dtype))
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = patch_rope(images.shape[2] // p, images.shape[3] // p, head_dim, self.config.rope_theta,
                              images.device)
        cos, sin = cos.to(dtype), sin.to(dtype)
        for layer in self.layer:
            x = layer(x, cos, sin)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """TRELLIS.2 conditioning tokens: last hidden state with a non-affine LayerNorm (eps 1e-5).

        Args:
            images: ``(B, 3, H, W)`` float, ImageNet-normalised (see `normalize_images`).

        Returns:
            ``(B, T, hidden_size)``, ``T = 5 + (H/16)(W/16)`` for ViT-L/16 with 4 registers.
        """
        x = self.last_hidden_state(images)
        return F.layer_norm(x, x.shape[-1:], eps=1e-5)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> ImageNet-normalised, as DINOv3 expects."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - mean) / std
