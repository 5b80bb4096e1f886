"""CLIP backbones from open_clip, adapted to hand re-identification inputs.

``create_clip`` builds any CLIP-style open_clip model (ViT or ModifiedResNet image tower, the
standard causal text transformer) or one of three tiny configs for tests and the demo (tiny-cnn:
CLIP's tiny text tower with HandCLIP's small conv image tower, ``TinyConvNet``), loads
weights safely (``handclip.model.weights``), then adapts the image tower's geometry:

- other input sizes, including non-square ones, by resizing the positional embedding grid
  (``model.pos_embed_interpolation``: bilinear without antialias as CLIP-ReID, or bicubic; the
  class-token embedding is kept as is);
- overlapping patches (CLIP-ReID's "OLP") by changing the ViT patch-embedding stride;
- ResNet last stride 1: layer4's first block no longer downsamples, doubling the final map
  (for TinyConvNet: its last max-pool is dropped).

Weights are always loaded into the model at its native geometry first, so a file written for
the native model loads strictly and mismatches are reported key by key. OpenAI's own files (their
TorchScript archives, and state dicts that still carry OpenAI's metadata entries) were trained with
QuickGELU: loading one into a GELU backbone is refused, naming the ``-quickgelu`` model to use.
"""

from __future__ import annotations

import difflib
import warnings
from copy import deepcopy
from functools import lru_cache
from typing import Optional, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from ..errors import CheckpointError, ConfigError
from .weights import load_state_into_clip, resolve_weights

# Tiny CLIP configs for tests and the built-in demo (random init). The text tower keeps CLIP's
# real vocabulary and context length so that prompts tokenize exactly as for full models.
_TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4}
TINY_CONFIGS: dict[str, dict] = {
    "tiny-vit": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8, "head_width": 64},
        "text_cfg": dict(_TINY_TEXT),
    },
    "tiny-rn": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 32, "patch_size": None, "head_width": 64},
        "text_cfg": dict(_TINY_TEXT),
    },
    # The demo's tower: HandCLIP's own small conv net (TinyConvNet) with CLIP's attention pooling, and the
    # tiny CLIP text tower. Not an open_clip config: "handclip_image_tower" tells create_clip to build it.
    "tiny-cnn": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "width": 32, "head_width": 64},
        "text_cfg": dict(_TINY_TEXT),
        "handclip_image_tower": "conv",
    },
}


class TinyConvNet(nn.Module):
    """A small VGG-style image tower (random init only) with CLIP's attention pooling on top.

    Why it exists: from random initialisation on 64 px synthetic hands, CLIP's own towers learn too
    slowly for a demo on a 2-core CPU (measured with HandCLIP's stage 2 on 300 identities: tiny ViT and
    tiny ModifiedResNet plateau at rank-1 ~0.2-0.3 on unseen identities after 200-500 steps, while this
    plain 3x3-conv + max-pool stack reaches ~0.75 after 200 steps). It keeps the interface HandCLIP's
    ResNet path reads: ``stem``, ``layer1..layer4`` (layer3/layer4 give the two pooled features) and
    ``attnpool`` (the projected feature), so the model, losses and training are the same code.

    Seven 3x3 convolutions (widths w, w, 2w, 2w, 4w, 4w, 8w), each with BatchNorm and ReLU. Spatial
    strides: stem 2, layer1-3 2 each (max-pool), layer4 2 (or 1 with ``set_last_stride(1)``), so at
    64 px the last map is 2x2 (4x4 at last stride 1), like a ModifiedResNet's.
    """

    def __init__(self, output_dim: int, width: int = 32, head_width: int = 64, image_size: int = 64):
        super().__init__()

        def conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.stem = nn.Sequential(*conv(3, w, 2), *conv(w, w))
        self.layer1 = nn.Sequential(nn.MaxPool2d(2), *conv(w, 2 * w), *conv(2 * w, 2 * w))
        self.layer2 = nn.Sequential(nn.MaxPool2d(2), *conv(2 * w, 4 * w), *conv(4 * w, 4 * w))
        self.layer3 = nn.Sequential(nn.MaxPool2d(2), *conv(4 * w, 8 * w))
        # Only the last downsampling, so that "last stride 1" means what it means for a ResNet.
        self.layer4 = nn.Sequential(nn.MaxPool2d(2))
        self.output_dim = output_dim
        self.image_size = image_size
        self.last_stride = 2
        self.attnpool = AttentionPool2d(image_size // 32, 8 * w, max(1, 8 * w // head_width), output_dim)
        std = (8 * w) ** -0.5  # as CLIP initialises its attention pool
        for layer in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(layer.weight, std=std)

    def set_last_stride(self, stride: int) -> None:
        self.layer4[0] = nn.MaxPool2d(2) if stride == 2 else nn.Identity()
        self.last_stride = stride

    def map_size_for(self, image_size: tuple[int, int], last_stride: int) -> tuple[int, int]:
        return tuple((((n - 1) // 2 + 1) // 8) // last_stride for n in image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(images)))))
        return self.attnpool(x)


def _build_clip(cfg: dict) -> open_clip.CLIP:
    """open_clip's CLIP from ``cfg``; for HandCLIP's own towers, CLIP's text side around our image tower."""
    tower = cfg.pop("handclip_image_tower", None)
    if tower is None:
        return open_clip.CLIP(**cfg)
    vision = cfg["vision_cfg"]
    # Built with a minimal ModifiedResNet (cheap, never used) so open_clip sets up the text side as usual.
    placeholder = {**cfg, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None}}
    clip = open_clip.CLIP(**placeholder)
    clip.visual = TinyConvNet(cfg["embed_dim"], vision["width"], vision["head_width"], vision["image_size"])
    return clip


# SHA-256 of OpenAI's official CLIP TorchScript archives. OpenAI publishes each file under a URL

# --------------------------------------------------------------------------------------------
# model configs


def available_backbones() -> list[str]:
    return list(TINY_CONFIGS) + open_clip.list_models()


def get_clip_config(name: str) -> dict:
    """The open_clip model config for ``name`` (a copy), or a ConfigError naming valid names."""
    if name in TINY_CONFIGS:
        return deepcopy(TINY_CONFIGS[name])
    lookup = name.replace("/", "-") if isinstance(name, str) else ""  # OpenAI spells ViT-B/16
    cfg = open_clip.get_model_config(lookup) if lookup and ":" not in lookup else None
    if cfg is None:
        suggestions = difflib.get_close_matches(name, available_backbones(), n=3, cutoff=0.5)
        common = ["ViT-B-16", "ViT-B-16-quickgelu", "ViT-B-32", "RN50", "RN50-quickgelu", "tiny-vit", "tiny-rn", "tiny-cnn"]
        hint = f"did you mean {', '.join(suggestions)}? " if suggestions else ""
        raise ConfigError(
            f"unknown backbone '{name}' in model.backbone; {hint}valid names include "
            f"{', '.join(common)} (any name from open_clip.list_models())"
        )
    _check_supported(name, cfg)
    return cfg


def _check_supported(name: str, cfg: dict) -> None:
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    problems = []
    if cfg.get("custom_text") or text.get("hf_model_name") or "multimodal_cfg" in cfg:
        problems.append("its text tower is not CLIP's own transformer")
    if vision.get("timm_model_name"):
        problems.append("its image tower is a timm model")
    if not isinstance(vision.get("layers", 12), (list, tuple)):
        if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok":
            problems.append("its ViT does not pool with a class token")
        if vision.get("pos_embed_type", "learnable") != "learnable":
            problems.append("its ViT has fixed positional embeddings")
    if text.get("pool_type", "argmax") != "argmax" or text.get("no_causal_mask") or text.get("embed_cls"):
        problems.append("its text tower does not read the end-of-text token under a causal mask")
    if problems:
        raise ConfigError(
            f"backbone '{name}' is not supported by HandCLIP because {' and '.join(problems)}; "
            f"use a CLIP-style model such as ViT-B-16, ViT-B-32 or RN50"
        )


@lru_cache(maxsize=8)
def get_tokenizer(name: str):
    """open_clip's tokenizer for the backbone (CLIP's BPE tokenizer for the tiny configs)."""
    if name in TINY_CONFIGS:
        return open_clip.SimpleTokenizer(context_length=TINY_CONFIGS[name]["text_cfg"]["context_length"])
    return open_clip.get_tokenizer(name)


def is_vit(clip: nn.Module) -> bool:
    return isinstance(clip.visual, VisionTransformer)



# --------------------------------------------------------------------------------------------
# geometry


POS_EMBED_INTERPOLATIONS = ("bilinear", "bicubic")


def _resize_grid(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], extra_tokens: int = 1,
                 interpolation: str = "bilinear"):
    """2D resize of the grid part of a [extra + gh*gw, C] positional embedding.

    ``bilinear``: without antialias, as CLIP-ReID resizes; ``bicubic``: antialiased when a side shrinks.
    """
    if interpolation not in POS_EMBED_INTERPOLATIONS:
        raise ConfigError(f"model.pos_embed_interpolation must be bilinear or bicubic, got {interpolation!r}")
    if tuple(old_grid) == tuple(new_grid):
        return pos
    tokens, grid = pos[:extra_tokens], pos[extra_tokens:]
    channels = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2).float()
    if interpolation == "bilinear":
        grid = F.interpolate(grid, size=tuple(new_grid), mode="bilinear", align_corners=False, antialias=False)
    else:
        shrinking = new_grid[0] < old_grid[0] or new_grid[1] < old_grid[1]
        grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=shrinking)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], channels).to(pos.dtype)
    return torch.cat([tokens, grid], dim=0)


def vit_grid(image_size: tuple[int, int], patch_size: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    return tuple((image_size[i] - patch_size[i]) // stride[i] + 1 for i in range(2))


def _adapt_vit(visual: VisionTransformer, image_size: tuple[int, int], patch_stride: Optional[int],
               interpolation: str = "bilinear") -> None:
    patch = tuple(visual.patch_size)
    if image_size[0] < patch[0] or image_size[1] < patch[1]:
        raise ConfigError(f"data.image_size {tuple(image_size)} is smaller than the ViT patch size {patch}")
    stride = (patch_stride, patch_stride) if patch_stride else patch
    if stride[0] > patch[0]:
        raise ConfigError(f"model.patch_stride {patch_stride} is larger than the patch size {patch[0]} (pixels would be skipped)")
    old_grid = tuple(visual.grid_size)
    new_grid = vit_grid(image_size, patch, stride)
    visual.conv1.stride = stride
    if new_grid != old_grid:
        with torch.no_grad():
            resized = _resize_grid(visual.positional_embedding.data, old_grid, new_grid, interpolation=interpolation)
        visual.positional_embedding = nn.Parameter(resized, requires_grad=visual.positional_embedding.requires_grad)
    visual.grid_size = new_grid
    visual.image_size = tuple(image_size)


def rn_feature_map_size(image_size: tuple[int, int], last_stride: int) -> tuple[int, int]:
    """Spatial size of ModifiedResNet's layer4 output for an input of ``image_size``."""

    def one(n: int) -> int:
        n = (n - 1) // 2 + 1  # stem conv1, stride 2, padding 1
        n //= 2  # stem avgpool
        n //= 2  # layer2
        n //= 2  # layer3
        return n // last_stride  # layer4
    return one(image_size[0]), one(image_size[1])


def _adapt_rn(visual: ModifiedResNet | TinyConvNet, image_size: tuple[int, int], last_stride: int,
              native: int, interpolation: str = "bilinear") -> None:
    if last_stride not in (1, 2):
        raise ConfigError(f"model.rn_last_stride must be 1 or 2, got {last_stride}")
    if isinstance(visual, TinyConvNet):
        visual.set_last_stride(last_stride)
        new_map = visual.map_size_for(image_size, last_stride)
    elif last_stride == 1:
        first = visual.layer4[0]
        first.avgpool = nn.Identity()
        first.stride = 1
        if first.downsample is not None:
            first.downsample[0] = nn.Identity()  # the "-1" AvgPool2d(2) that precedes the 1x1 conv
    if not isinstance(visual, TinyConvNet):
        new_map = rn_feature_map_size(image_size, last_stride)
    if min(new_map) < 1:
        raise ConfigError(f"data.image_size {tuple(image_size)} is too small for a ResNet backbone (minimum 32x32)")
    old_side = native // 32
    if new_map != (old_side, old_side):
        pool = visual.attnpool
        with torch.no_grad():
            resized = _resize_grid(pool.positional_embedding.data, (old_side, old_side), new_map,
                                   interpolation=interpolation)
        pool.positional_embedding = nn.Parameter(resized, requires_grad=pool.positional_embedding.requires_grad)
    visual.image_size = tuple(image_size)
    visual.feature_map_size = new_map


def _as_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    size = tuple(int(v) for v in image_size)
    if len(size) != 2:
        raise ConfigError(f"image size {image_size} must be (height, width)")
    return size


# --------------------------------------------------------------------------------------------
# public entry point


def create_clip(
    name: str,
    weights: Optional[str] = None,
    image_size: Sequence[int] | int = (224, 224),
    patch_stride: Optional[int] = None,
    rn_last_stride: int = 1,
    allow_unsafe_weights: bool = False,
    pos_embed_interpolation: str = "bilinear",
    allow_activation_mismatch: bool = False,
) -> open_clip.CLIP:
    """Build the open_clip CLIP model ``name`` with ``weights`` for inputs of ``image_size`` (H, W).

    ``weights``: None (random init), a local file (TorchScript/pickle only for known OpenAI
    SHA-256 or ``allow_unsafe_weights``), or an open_clip pretrained tag (needs network). OpenAI's
    files need a QuickGELU backbone (``check_activation``). The returned model carries
    ``handclip_geometry`` (a dict of how it was adapted).
    """
    cfg = get_clip_config(name)
    native_size = cfg["vision_cfg"].get("image_size", 224)
    if not isinstance(native_size, int):
        raise ConfigError(f"backbone '{name}' has a non-square native image size {native_size}, which is not supported")
    image_size = _as_hw(image_size)
    if weights is not None and str(weights).strip().lower() in ("", "none", "random"):
        weights = None

    if weights is None:
        state, source, openai = None, "random", None
    else:
        tags = open_clip.list_pretrained_tags_by_model(name) if name not in TINY_CONFIGS else []
        state, source, openai = resolve_weights(name, weights, allow_unsafe_weights, tags)
    if openai is not None:
        check_activation(name, cfg, weights, openai, allow_activation_mismatch)
    clip = _build_clip(cfg)
    if state is not None:
        load_state_into_clip(clip, state, weights, name)

    if isinstance(clip.visual, VisionTransformer):
        if rn_last_stride not in (1, 2):
            raise ConfigError(f"model.rn_last_stride must be 1 or 2, got {rn_last_stride}")
        _adapt_vit(clip.visual, image_size, patch_stride, pos_embed_interpolation)
        kind = "vit"
    else:
        if patch_stride is not None:
            raise ConfigError(f"model.patch_stride applies to ViT backbones only, not to '{name}'")
        _adapt_rn(clip.visual, image_size, rn_last_stride, native_size, pos_embed_interpolation)
        kind = "rn"
    clip.handclip_geometry = {
        "backbone": name,
        "kind": kind,
        "image_size": list(image_size),
        "patch_stride": patch_stride,
        "rn_last_stride": rn_last_stride if kind == "rn" else None,
        "weights": source,
    }
    return clip


def check_activation(name: str, cfg: dict, weights, why_openai: str, allow_mismatch: bool = False) -> None:
    """OpenAI's CLIP weights were trained with QuickGELU: refuse them for a GELU backbone (one line)."""
    if cfg.get("quick_gelu", False):
        return
    quick = f"{name}-quickgelu"
    hint = f"use model.backbone '{quick}'" if open_clip.get_model_config(quick) is not None else \
        "use a QuickGELU backbone (an open_clip '-quickgelu' model)"
    message = (f"model.weights {weights} is OpenAI's CLIP ({why_openai}), trained with QuickGELU, but backbone "
               f"'{name}' uses GELU and would give wrong features; {hint}, or set "
               f"model.allow_activation_mismatch=true to load it anyway")
    if not allow_mismatch:
        raise CheckpointError(message)
    warnings.warn(message, UserWarning, stacklevel=3)
