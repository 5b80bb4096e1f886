"""Experiment configuration: YAML files validated into typed objects.

A config file mirrors ``Config`` below section by section. Unknown keys, wrong types and impossible
values are rejected with a message naming the key (``stage2.ids_per_batch: must be >= 2``).
Command-line overrides use dotted keys: ``--set stage2.epochs=30 model.backbone=RN50``.
Defaults are what CLIP-ReID's official code computes on its ViT-B/16 recipe (docs/method.md, "Defaults");
each place where HandCLIP can compute something else is a named switch (the README's "Differences from
CLIP-ReID" lists them).

A relative input path in a config file (``data.root``, ``data.manifest``, ``data.cache_dir``, a
``model.weights`` file) is relative to the file's own folder, as paths in a manifest are relative to
the manifest's folder; paths given with ``--set`` and ``output_dir`` are relative to the current folder.

A file may start from another: ``_BASE_: clipreid_vitb16.yaml`` (a path relative to the file, or a
list of them, later bases winning) loads the base first and lays the file's own keys over it, section
by section, so each dataset config states only what differs from the recipe it builds on.
"""

from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .config_base import (  # noqa: F401 - the bounds are part of this module's interface
    MAX_BATCH, IntervalConfig,
    MAX_EPOCHS,
    MAX_IDS,
    MAX_IMAGE_SIDE,
    MAX_LR,
    MAX_RUNS,
    MAX_SEED,
    InferencePrecision,
    Interpolation,
    Section,
)
from .config_prompts import ImagePromptSettings, SingleStageConfig, check_image_prompts
from .config_synthetic import SyntheticConfig
from .errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# CLIP-ReID's ViT configs normalise with mean = std = 0.5 (its RN50 config with ImageNet's statistics:
# configs/rn50 sets them).
CLIPREID_VIT_MEAN = (0.5, 0.5, 0.5)
CLIPREID_VIT_STD = (0.5, 0.5, 0.5)
# A config holds at most this many values once YAML aliases are expanded (a few hundred in practice);
# an "alias bomb" of a kilobyte expands to billions.
MAX_CONFIG_NODES = 100_000
# Any value echoed in an error message is cut to this many characters.
MAX_ECHO = 120


_Section = Section


class AugmentConfig(_Section):
    hflip_p: float = Field(0.5, ge=0, le=1)
    pad: int = Field(10, ge=0)
    random_erasing_p: float = Field(0.5, ge=0, le=1)
    resize_crop: Optional[tuple[int, int]] = Field(
        None, description="training only: resize to this (height, width) instead of the input size, then take a "
                          "random crop of the input size (CLIP-HandID: 256x256, crop 224)")
    random_erasing_fill: Literal["pixel", "zero"] = Field(
        "pixel", description="pixel: timm's RandomErasing, per-pixel N(0,1) noise (CLIP-ReID); "
                             "zero: torchvision's RandomErasing filled with 0, the mean colour after normalisation")


class InterpolationConfig(_Section):
    """Resampling of the one resize from the decoded image to ``data.image_size``."""

    train: Interpolation = Field("bicubic", description="training transform (CLIP-ReID: bicubic)")
    eval: Interpolation = Field(
        "bilinear", description="evaluation and stage-1 encoding (CLIP-ReID: torchvision's default, bilinear)")


class DataConfig(_Section):
    dataset: Literal["11k", "hd", "folder", "synthetic"] = "synthetic"
    root: Optional[str] = None
    aspect: Optional[Literal["dorsal_r", "dorsal_l", "palmar_r", "palmar_l", "all"]] = None
    manifest: Optional[str] = Field(None, description="use this manifest instead of preparing one")
    runs: int = Field(10, ge=1, le=MAX_RUNS)
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    gallery_all: bool = False
    synthetic: SyntheticConfig = SyntheticConfig()
    image_size: tuple[int, int] = Field((224, 224), description="model input (height, width)")
    pixel_mean: tuple[float, float, float] = CLIPREID_VIT_MEAN
    pixel_std: tuple[float, float, float] = CLIPREID_VIT_STD
    interpolation: InterpolationConfig = InterpolationConfig()
    augment: AugmentConfig = AugmentConfig()
    decode_cache: bool = True
    cache_dir: Optional[str] = Field(None, description="default: ~/.cache/handclip")
    cache_resolution: Optional[int] = Field(
        None, ge=16, description="None: each image is resized once, from the decoded original to image_size, and "
                                 "the decode cache stores that resize (CLIP-ReID's pixels); N: first shrink "
                                 "(bicubic) to long side N, cached, then resize (earlier HandCLIP)")
    num_workers: int | Literal["auto"] = "auto"
    skip_bad: bool = False
    allow_id_overlap: bool = Field(
        False, description="allow query/gallery identities that are also training identities (normally refused: "
                           "the scores would measure memory, not identification)")

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value):
        if value != "auto" and not 0 <= value <= 256:
            raise ValueError("must be 'auto' or a whole number from 0 to 256")
        return value

    @model_validator(mode="after")
    def _check(self):
        if self.manifest is None and self.dataset != "synthetic" and not self.root:
            raise ValueError(f"data.root is required for dataset '{self.dataset}' (or give data.manifest)")
        if self.manifest is None and self.dataset == "11k" and self.aspect is None:
            raise ValueError("data.aspect is required for dataset '11k' (dorsal_r, dorsal_l, palmar_r, palmar_l or all)")
        if min(self.image_size) < 16:
            raise ValueError(f"data.image_size {self.image_size} is too small (minimum 16)")
        if max(self.image_size) > MAX_IMAGE_SIDE:
            raise ValueError(f"data.image_size {self.image_size} is too large (maximum {MAX_IMAGE_SIDE} per side)")
        crop = self.augment.resize_crop
        if crop is not None and (crop[0] < self.image_size[0] or crop[1] < self.image_size[1]):
            raise ValueError(f"data.augment.resize_crop {crop} is smaller than data.image_size {self.image_size}")
        if min(self.pixel_std) <= 0:
            raise ValueError(f"data.pixel_std {self.pixel_std} must be above 0 in every channel")
        return self


class ModelConfig(ImagePromptSettings):
    """The model; the image-prompt keys (``prompt``, ``inversion``, ...) are ``config_prompts.ImagePromptSettings``."""

    backbone: str = Field("ViT-B-16-quickgelu", description="open_clip model name (-quickgelu for OpenAI's weights, "
                                                          "as CLIP-ReID), or tiny-vit / tiny-rn / tiny-cnn")
    weights: Optional[str] = Field(None, description="local file, open_clip pretrained tag, or none (random)")
    allow_unsafe_weights: bool = Field(False, description="allow pickle/TorchScript files of unknown hash")
    patch_stride: Optional[int] = Field(None, ge=1, description="overlapping patches (CLIP-ReID OLP uses 12)")
    rn_last_stride: int = Field(1, ge=1, le=2)
    n_ctx: int = Field(4, ge=1)
    prompt_template: str = "A photo of a X X X X hand."
    neck_feat: Literal["before", "after"] = "before"
    id_head: Literal["linear", "arcface", "text"] = "linear"
    arcface_scale: float = Field(30.0, gt=0)
    arcface_margin: float = Field(0.5, ge=0)
    unfreeze_last_n: Optional[int] = Field(None, ge=0, description="train only the last N blocks (None: all)")
    logit_scale: Optional[float] = Field(
        None, gt=0, description="scale of the image-text logits when losses.logits is cosine (None: the CLIP model's own)")
    pos_embed_interpolation: Interpolation = Field(
        "bilinear", description="positional-embedding resize at non-native input sizes: bilinear without "
                                "antialias (CLIP-ReID) or bicubic, antialiased when shrinking (earlier HandCLIP)")
    allow_activation_mismatch: bool = Field(
        False, description="load OpenAI's weights (trained with QuickGELU) into a GELU backbone anyway")
    sie: Literal["none", "aspect"] = Field(
        "none", description="aspect: CLIP-ReID's side-information embedding with the hand aspect (the manifest's "
                            "camid) as the camera; none: no aspect input (docs/method.md, 'Aspects of a hand')")
    sie_coe: float = Field(3.0, ge=0, le=100, description="scale of the aspect embedding (CLIP-ReID's SIE_COE)")
    aspect_head: bool = Field(False, description="a small CNN of its own that names a photo's aspect, to warn when a "
                                                 "query's stated aspect looks wrong (trained in stage 2)")

    @model_validator(mode="after")
    def _check(self):
        placeholders = sum(word.strip(".,;:!?") == "X" for word in self.prompt_template.split())
        if placeholders != self.n_ctx:
            raise ValueError(
                f"model.prompt_template '{self.prompt_template}' has {placeholders} 'X' "
                f"placeholders but model.n_ctx is {self.n_ctx}"
            )
        check_image_prompts(self)
        return self


class Stage1Config(_Section):
    enabled: bool = True
    epochs: int = Field(120, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)
    lr: float = Field(3.5e-4, gt=0, le=MAX_LR)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(5, ge=0, le=MAX_EPOCHS)
    warmup_lr_init: float = Field(1e-5, gt=0, le=MAX_LR)
    lr_min: float = Field(1e-6, ge=0)
    prompt_l2: float = Field(0.0, ge=0, description="L2 penalty on the prompt vectors")
    schedule: Literal["epoch", "step"] = Field("epoch", description="update the lr once per epoch or every step")
    schedule_epochs_from: Literal[0, 1] = Field(
        1, description="1: epoch e trains at the scheduler's value for e, epochs numbered 1..N as CLIP-ReID's "
                       "scheduler.step(epoch); 0: numbered 0..N-1 (earlier HandCLIP)")
    warmup_prefix: bool = Field(
        False, description="timm's warmup_prefix: False (CLIP-ReID) runs the cosine over all epochs, warm-up "
                           "included; True starts it after the warm-up (earlier HandCLIP)")
    cache_features: bool = Field(True, description="reuse encoded training features across runs")


class Stage2Config(_Section):
    enabled: bool = True
    epochs: int = Field(60, ge=1, le=MAX_EPOCHS)
    ids_per_batch: int = Field(16, ge=2, le=MAX_BATCH)
    images_per_id: int = Field(4, ge=2, le=MAX_BATCH)
    lr: float = Field(5e-6, gt=0, le=MAX_LR)
    bias_lr_factor: float = Field(2.0, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    weight_decay_bias: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(10, ge=0, le=MAX_EPOCHS)
    warmup_factor: float = Field(0.1, gt=0, le=1)
    milestones: list[int] = [30, 50]
    gamma: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    triplet_margin: float = Field(0.3, ge=0)
    id_weight: float = Field(0.25, ge=0)
    triplet_weight: float = Field(1.0, ge=0)
    i2t_weight: float = Field(1.0, ge=0)
    supcon_weight: float = Field(0.0, ge=0)
    center_weight: float = Field(0.0, ge=0)
    center_lr: float = Field(0.5, gt=0, le=MAX_LR)
    prompt_l2: float = Field(0.0, ge=0)
    freeze_prompt: bool = True
    image_prompt_weight: float = Field(
        1.0, ge=0, description="with model.prompt image or both: SupCon image->text + text->image between each "
                               "image and its own prompt's text feature")
    text_features: Literal["once", "per_batch"] = "once"
    head_lr: Optional[float] = Field(None, gt=0, le=MAX_LR, description="lr of new heads (default: lr)")
    aspect_head_lr: float = Field(1e-3, gt=0, le=MAX_LR, description="lr of the aspect head (model.aspect_head), "
                                                                     "a small CNN trained from scratch")
    grad_clip: Optional[float] = Field(None, gt=0)
    eval_every: int = Field(1, ge=1)
    schedule: Literal["epoch", "step"] = Field("epoch", description="update the lr once per epoch or every step")
    schedule_epochs_from: Literal[0, 1] = Field(
        1, description="1: epoch e trains at the warm-up multi-step value for e (CLIP-ReID steps its scheduler at "
                       "the start of every epoch, last_epoch 1..N); 0: one epoch earlier (earlier HandCLIP)")
    triplet_features: list[Literal["mid", "last", "proj"]] = Field(
        ["mid", "last", "proj"], description="features the batch-hard triplet loss is summed over: mid = CLS after "
                                             "the second-to-last block (RN: layer3), last = ln_post CLS, proj = projection")
    sampler_leftover: Literal["drop", "extra_batch"] = Field(
        "drop", description="identities left when fewer than ids_per_batch still have images: drop (CLIP-ReID's "
                            "RandomIdentitySampler) or give the unvisited ones one more batch")

    @model_validator(mode="after")
    def _check(self):
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"stage2.milestones {self.milestones} must be increasing")
        if len(set(self.triplet_features)) != len(self.triplet_features):
            raise ValueError(f"stage2.triplet_features {self.triplet_features} names a feature twice")
        if self.triplet_weight > 0 and not self.triplet_features:
            raise ValueError("stage2.triplet_features is empty but stage2.triplet_weight is above 0")
        return self


class LossesConfig(_Section):
    logits: Literal["dot", "cosine"] = Field(
        "dot", description="image-text logits: raw dot products of the unnormalised features, temperature 1 "
                           "(CLIP-ReID), or cosine similarities x model.logit_scale (else CLIP's own)")


class RuntimeConfig(_Section):
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    inference_precision: InferencePrecision = Field(
        "auto", description="image features' precision: auto is bf16 where the hardware multiplies bf16 natively "
                            "(AMX or AVX512-BF16 CPUs, bf16 GPUs), else fp32; compared and stored in fp32")
    compile: bool = False
    channels_last: Literal["auto", "on", "off"] = "auto"
    fused_optimizer: Literal["auto", "on", "off"] = "auto"
    threads: Optional[int] = Field(None, ge=1, le=1024)
    joint: bool = Field(False, description="one joint run of both stages instead of stage 1 then stage 2")
    progress: bool = True


class EvalConfig(_Section):
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    flip: bool = False
    rerank: bool = False
    k1: int = Field(20, ge=1)
    k2: int = Field(6, ge=1)
    lambda_value: float = Field(0.3, ge=0, le=1)
    metric: Literal["cosine", "euclidean"] = "cosine"
    max_rank: int = Field(50, ge=1)


class PretrainConfig(_Section):
    """Contrastive pretraining of a tiny CLIP on captioned synthetic hands (docs/method.md, "Synthetic hands")."""

    enabled: bool = Field(False, description="pretrain the tiny backbone first and start from it (model.weights)")
    first_id: int = Field(100000, ge=0, le=MAX_SEED,
                          description="synthetic identities first_id.. (disjoint from the data's)")
    num_ids: int = Field(400, ge=2, le=MAX_IDS)
    images_per_id: int = Field(8, ge=1, le=1000)
    epochs: int = Field(8, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(128, ge=2, le=MAX_BATCH)
    lr: float = Field(2e-3, gt=0, le=MAX_LR)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0, le=MAX_EPOCHS * 1000)
    caption_scene: float = Field(0.5, ge=0, le=1,
                                 description="chance a caption names each photo condition (background, light...)")
    seed: int = Field(0, ge=0, le=MAX_SEED)


class Config(_Section):
    name: str = "handclip"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    single_stage: SingleStageConfig = SingleStageConfig()
    pretrain: PretrainConfig = PretrainConfig()
    losses: LossesConfig = LossesConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # The name becomes a folder under output_dir: a separator or '..' would put the run elsewhere.
        if not value or value in (".", "..") or any(c in value for c in "/\\\x00") or len(value) > 100:
            raise ValueError("name must be a plain folder name (no '/', '\\' or '..', at most 100 characters)")
        return value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def shorten(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a huge value never floods a message."""
    # reprlib bounds the work on big (or alias-shared) containers before the text is cut.
    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    short.maxlevel = 3
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_validation_error(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        value = err.get("input")
        shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(value, dict) else f" (got {shorten(value)})"
        problems.append(f"{key}: {msg}{shown}")
    shown = problems[:5] + ([f"and {len(problems) - 5} more"] if len(problems) > 5 else [])
    text = "; ".join(shown)
    if len(text) > 4 * MAX_ECHO:
        text = text[: 4 * MAX_ECHO - 3] + "..."
    return f"invalid configuration in {source}: {text}"


def check_size(value: Any, source: str, limit: int = MAX_CONFIG_NODES) -> None:
    """Refuse a YAML value that holds more than ``limit`` values once aliases are expanded.

    YAML aliases share one object, so loading is cheap, but anything that walks the value (validation,
    messages) walks every repetition; a kilobyte of nested aliases is billions of values.
    """
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(f"{source} holds more than {limit} values once YAML aliases are expanded; "
                              f"a configuration is far smaller (refused as an alias bomb)")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"stage2.epochs=30"`` -> (["stage2", "epochs"], 30), the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {shorten(text)} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {shorten(text)} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {shorten(text)}: cannot parse value {shorten(raw)}") from None
    check_size(value, f"override {shorten(key)}")
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = dict(raw)
    for text in overrides or []:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {shorten(text)}: {shorten(part)} is not a section")
            else:
                child = dict(child)
            node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict | None, overrides: list[str] | None = None, source: str = "config") -> Config:
    raw = apply_overrides(raw or {}, overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


BASE_KEY = "_BASE_"


def _merge(base: dict, child: dict) -> dict:
    """``child`` laid over ``base``: sections merge key by key, any other value replaces the base's."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# Keys that name input files or folders. One rule for every file HandCLIP reads: a relative input path
# written in a file (config or manifest) is relative to that file's folder; one typed on the command line
# (--set, --root, ...) is relative to the current folder. output_dir, where runs go, is relative to the
# current folder, as every output path is.
PATH_KEYS = (("data", "root"), ("data", "manifest"), ("data", "cache_dir"), ("model", "weights"))
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")


def resolve_file_paths(raw: dict, folder: Path) -> None:
    """Make the relative paths of one config file's own keys relative to ``folder`` (in place).

    ``model.weights`` may also be an open_clip tag (``openai``); it is taken as a path only when it has
    a folder separator or a weights-file suffix."""
    for keys in PATH_KEYS:
        node = raw
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        value = node.get(keys[-1])
        if not isinstance(value, str) or not value or value.startswith("~") or Path(value).is_absolute():
            continue
        if keys == ("model", "weights") and "/" not in value and not value.lower().endswith(_WEIGHT_SUFFIXES):
            continue
        node[keys[-1]] = str(Path(os.path.normpath(folder.absolute() / value)))


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The raw mapping of a YAML config file, with its ``_BASE_`` files merged underneath."""
    path = Path(path)
    if not path.is_file():
        where = f" (the _BASE_ of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"config file {path} names itself as a base through _BASE_ ({cycle})")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {shorten(str(exc), 300)}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    check_size(raw, f"config file {path}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(raw).__name__}")
    resolve_file_paths(raw, path.parent)
    bases = raw.pop(BASE_KEY, None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"config file {path}: {BASE_KEY} must be a file name or a list of file names")
    merged: dict = {}
    for base in bases:
        merged = _merge(merged, read_config_file(path.parent / base, (*_chain, path.resolve())))
    return _merge(merged, raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply overrides."""
    if path is None:
        return config_from_dict({}, overrides, source="defaults")
    return config_from_dict(read_config_file(path), overrides, source=str(path))
