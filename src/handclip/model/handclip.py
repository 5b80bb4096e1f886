"""The HandCLIP model: CLIP-ReID's image features, BNNeck, ID heads, and identity prompts.

Image side (docs/method.md, "Features"): for a ViT the class token after the second-to-last block
(``feat_mid``), after the last block + ``ln_post`` (``feat_last``, width W) and after the
projection (``feat_proj``, dim D); for a ModifiedResNet the spatially pooled layer3 / layer4
maps and the attention-pool output. ``feat_last`` and ``feat_proj`` each pass through a BNNeck
(BatchNorm1d, bias frozen) and an ID classifier.

Aspects (``model.sie: aspect``, ``model.aspect_head``): ``handclip.model.aspect_embedding``.

Text side: one learnable context per identity, ``"A photo of a X X X X hand."`` with the X
positions replaced by ``ctx[label]``; the text feature is the transformer output at the
end-of-text token (argmax of the token ids), through ``ln_final`` and ``text_projection``.
With ``model.prompt`` image or both, each image also gets its own prompt from an inversion network, and
optionally CLIP-HandID's interaction network and third ID head (``model.image_prompts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from pydantic import ValidationError
from torch import nn

from ..config import DataConfig, ModelConfig
from ..errors import ConfigError
from .aspect_embedding import AspectEmbedding, AspectHead, add_to_class_token, attention_pool
from .attention import block_forward, sdpa_applies
from .backbone import create_clip, get_tokenizer, is_vit
from .heads import ArcMarginProduct, linear_id_classifier
from .image_prompts import ImagePrompts, InteractionNetwork, attention_pool_tokens, build_image_prompts


@dataclass
class ModelOutput:
    feat_last: torch.Tensor  # [B, W] pre-BN last-block feature
    feat_proj: torch.Tensor  # [B, D] pre-BN projected feature
    logits: Optional[list[torch.Tensor]]  # ID logits of the two BN heads; None in eval / id_head 'text'
    image_proj: torch.Tensor  # [B, D] projected feature used for image-to-text scores
    feat_mid: Optional[torch.Tensor] = None  # ViT: CLS after the second-to-last block; RN: layer3 pooled
    bn_last: Optional[torch.Tensor] = None  # [B, W] after BNNeck
    bn_proj: Optional[torch.Tensor] = None  # [B, D] after BNNeck
    aspect_logits: Optional[torch.Tensor] = None  # [B, 4] of the aspect head (model.aspect_head), training only
    prompt_text: Optional[torch.Tensor] = None  # [B, D] text feature of each image's own prompt (image prompts)
    feat_inter: Optional[torch.Tensor] = None  # [B, D] interaction network's feature, pre-BN


class PromptLearner(nn.Module):
    """Identity-specific prompt embeddings: CLIP's prefix/suffix token embeddings around ctx[label]."""

    def __init__(self, template: str, n_ctx: int, num_ids: int, tokenizer, token_embedding: nn.Embedding):
        super().__init__()
        tokens = tokenizer([template]).long()  # [1, L]: SOS ... EOT, 0-padded
        x_id = int(tokenizer(["X"])[0, 1])
        positions = (tokens[0] == x_id).nonzero().flatten().tolist()
        if len(positions) != n_ctx or (positions and positions[-1] - positions[0] != n_ctx - 1):
            raise ConfigError(
                f"model.prompt_template '{template}' must contain exactly model.n_ctx={n_ctx} consecutive "
                f"'X' placeholders (found {len(positions)})"
            )
        start = positions[0]
        with torch.no_grad():
            embedded = token_embedding(tokens).detach().clone()
        self.n_ctx = n_ctx
        self.num_ids = num_ids
        self.template = template
        width = embedded.shape[-1]
        # Prefix: SOS + "a photo of a"; suffix: "hand." + EOT + padding. Both stay CLIP's own.
        self.register_buffer("token_prefix", embedded[:, :start])
        self.register_buffer("token_suffix", embedded[:, start + n_ctx:])
        self.register_buffer("tokenized_prompt", tokens)
        # Plain int, read without touching the device (the end-of-text token has the largest id).
        self.eot_index = int(tokens.argmax(dim=-1)[0])
        self.ctx = nn.Parameter(torch.empty(num_ids, n_ctx, width))
        nn.init.normal_(self.ctx, std=0.02)

    @property
    def prompt_length(self) -> int:
        """Positions up to and including the end-of-text token: all the text encoder needs to run."""
        return self.eot_index + 1

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [B, L, width] for identity indices ``labels``."""
        ctx = self.ctx[labels]
        batch = ctx.shape[0]
        prefix = self.token_prefix.expand(batch, -1, -1).to(ctx.dtype)
        suffix = self.token_suffix.expand(batch, -1, -1).to(ctx.dtype)
        return torch.cat([prefix, ctx, suffix], dim=1)


class TextEncoder(nn.Module):
    """CLIP's text transformer run on prompt embeddings instead of token ids."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask.clone(), persistent=False)

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        if isinstance(proj, nn.Linear):
            return proj.out_features
        return proj.shape[1] if proj is not None else self.ln_final.weight.shape[0]

    def forward(self, prompts: torch.Tensor, tokens: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
        """Text features at the end-of-text token. ``length``: run only the first ``length`` positions.

        Under the causal mask no position sees a later one, so positions after the last end-of-text
        token cannot change the result: cutting them is exact, and for the default template (11 tokens
        of a 77-token context) about 7x less work.
        """
        length = prompts.shape[1] if length is None else length
        x = prompts[:, :length] + self.positional_embedding[:length].to(prompts.dtype)
        # open_clip's Transformer takes batch-first input and handles its own layout.
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        # The end-of-text token has the largest id; under the causal mask it has seen the whole prompt.
        eot = tokens.argmax(dim=-1).to(x.device)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        x = self.ln_final(x)
        proj = self.text_projection
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj if proj is not None else x


class HandCLIP(nn.Module):
    def __init__(
        self,
        clip: nn.Module,
        tokenizer,
        num_ids: int,
        n_ctx: int = 4,
        prompt_template: str = "A photo of a X X X X hand.",
        neck_feat: str = "before",
        id_head: str = "linear",
        arcface_scale: float = 30.0,
        arcface_margin: float = 0.5,
        sie: str = "none",
        sie_coe: float = 3.0,
        aspect_head: bool = False,
    ):
        super().__init__()
        if num_ids < 1:
            raise ConfigError(f"the model needs at least one training identity, got num_ids={num_ids}")
        if neck_feat not in ("before", "after"):
            raise ConfigError(f"model.neck_feat must be 'before' or 'after', got {neck_feat!r}")
        if id_head not in ("linear", "arcface", "text"):
            raise ConfigError(f"model.id_head must be 'linear', 'arcface' or 'text', got {id_head!r}")
        self.kind = "vit" if is_vit(clip) else "rn"
        self.image_encoder = clip.visual
        self.text_encoder = TextEncoder(clip)
        self.prompt_learner = PromptLearner(prompt_template, n_ctx, num_ids, tokenizer, clip.token_embedding)
        # CLIP's temperature, kept fixed: used only for text-score ID logits.
        self.register_buffer("logit_scale", clip.logit_scale.detach().clone().reshape(()))

        visual = self.image_encoder
        self.width = int(visual.transformer.width if self.kind == "vit" else visual.attnpool.k_proj.in_features)
        self.embed_dim = int(visual.output_dim)
        if self.text_encoder.output_dim != self.embed_dim:
            raise ConfigError(
                f"backbone's text projection ({self.text_encoder.output_dim}) and image projection "
                f"({self.embed_dim}) differ; HandCLIP needs a shared embedding space"
            )
        self.num_ids = int(num_ids)
        self.feature_dim = self.width + self.embed_dim
        self.neck_feat = neck_feat
        self.id_head = id_head

        self.bottleneck = nn.BatchNorm1d(self.width)
        self.bottleneck_proj = nn.BatchNorm1d(self.embed_dim)
        for bn in (self.bottleneck, self.bottleneck_proj):
            bn.bias.requires_grad_(False)  # BNNeck: shift-free so the feature stays centred for cosine retrieval
        if id_head == "linear":
            self.classifier = linear_id_classifier(self.width, num_ids)
            self.classifier_proj = linear_id_classifier(self.embed_dim, num_ids)
        elif id_head == "arcface":
            self.classifier = ArcMarginProduct(self.width, num_ids, arcface_scale, arcface_margin)
            self.classifier_proj = ArcMarginProduct(self.embed_dim, num_ids, arcface_scale, arcface_margin)
        else:
            self.classifier = None
            self.classifier_proj = None
        if sie not in ("none", "aspect"):
            raise ConfigError(f"model.sie must be 'none' or 'aspect', got {sie!r}")
        # Built after the heads, so a model without them draws exactly the random numbers it always drew.
        self.aspect_embedding = AspectEmbedding(self.width, sie_coe) if sie == "aspect" else None
        self.aspect_head = AspectHead() if aspect_head else None
        # Image-conditioned prompts and the interaction head (``add_image_prompts``); none for model.prompt identity.
        self.image_prompts: Optional[ImagePrompts] = None
        self.interaction: Optional[InteractionNetwork] = None
        self.bottleneck_inter: Optional[nn.BatchNorm1d] = None
        self.classifier_inter: Optional[nn.Module] = None
        self.spec: dict[str, Any] = {}  # filled by build_model: what a checkpoint needs to rebuild this model

    # ---------------------------------------------------------------- image side

    def _vit_features(self, images: torch.Tensor, tokens: bool = False, side: Optional[torch.Tensor] = None):
        v = self.image_encoder
        x = v.conv1(images)  # [B, W, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [B, gh*gw, W]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = add_to_class_token(torch.cat([cls, x], dim=1), side) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        fused = sdpa_applies(blocks[0], x, self.training)  # bf16 inference: fused attention (attention.py)
        for block in blocks[:-1]:
            x = block_forward(block, x) if fused else block(x)
        mid = x
        x = block_forward(blocks[-1], x) if fused else blocks[-1](x)
        cls_index = (slice(None), 0) if batch_first else (0, slice(None))
        feat_mid = mid[cls_index]
        feat_last = v.ln_post(x[cls_index])
        feat_proj = feat_last @ v.proj
        if not tokens:
            return feat_mid, feat_last, feat_proj, None
        # Every token through ln_post and the projection: what the image-prompt parts attend over.
        return feat_mid, feat_last, feat_proj, v.ln_post(x if batch_first else x.transpose(0, 1)) @ v.proj

    def _rn_features(self, images: torch.Tensor, tokens: bool = False, side: Optional[torch.Tensor] = None):
        v = self.image_encoder
        x = v.stem(images.to(next(v.parameters()).dtype))
        x = v.layer2(v.layer1(x))
        x3 = v.layer3(x)
        x4 = v.layer4(x3)
        if not tokens:
            return x3.mean(dim=(2, 3)), x4.mean(dim=(2, 3)), attention_pool(v.attnpool, x4, side), None
        pooled = attention_pool_tokens(v.attnpool, x4, side)  # its first output is what v.attnpool(x4) returns
        return x3.mean(dim=(2, 3)), x4.mean(dim=(2, 3)), pooled[:, 0], pooled

    def _features(self, images: torch.Tensor, tokens: bool = False, aspects: Optional[torch.Tensor] = None):
        """(feat_mid, feat_last, feat_proj, projected tokens or None), all before the BNNeck; ``aspects`` [B]
        (indices into ``handclip.aspects.ASPECTS``) add the aspect embeddings when the model has them."""
        side = None if aspects is None or self.aspect_embedding is None else self.aspect_embedding(aspects)
        if self.kind == "vit":
            return self._vit_features(images, tokens, side)
        return self._rn_features(images, tokens, side)

    def image_features(self, images: torch.Tensor, aspects: Optional[torch.Tensor] = None):
        """(feat_mid, feat_last, feat_proj), all before the BNNeck (``aspects``: as for ``_features``)."""
        return self._features(images, aspects=aspects)[:3]

    def aspect_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The aspect head's logits [B, 4] (``model.aspect_head``)."""
        return self.aspect_head(images)

    def _head_logits(self, classifier, features: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return classifier(features, labels) if self.id_head == "arcface" else classifier(features)

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
                aspects: Optional[torch.Tensor] = None) -> ModelOutput:
        """Image features and, in training mode, ID logits (ArcFace applies its margin when ``labels`` are given)
        and the aspect head's logits; with image prompts, in training mode (always, with the interaction head)
        each image's prompt text feature."""
        prompts = self.image_prompts
        with_text = prompts is not None and (self.training or self.interaction is not None)
        with_tokens = with_text and (self.interaction is not None or prompts.reads_tokens)
        feat_mid, feat_last, feat_proj, tokens = self._features(images, with_tokens, aspects)
        bn_last = self.bottleneck(feat_last)
        bn_proj = self.bottleneck_proj(feat_proj)
        logits = None
        if self.training and self.classifier is not None:
            logits = [self._head_logits(self.classifier, bn_last, labels),
                      self._head_logits(self.classifier_proj, bn_proj, labels)]
        aspect_logits = self.aspect_head(images) if self.training and self.aspect_head is not None else None
        out = ModelOutput(feat_last=feat_last, feat_proj=feat_proj, logits=logits, image_proj=feat_proj,
                          feat_mid=feat_mid, bn_last=bn_last, bn_proj=bn_proj, aspect_logits=aspect_logits)
        if with_text:
            out.prompt_text = self.image_prompt_features(feat_proj, tokens, labels)
            if self.interaction is not None:
                out.feat_inter = self.interaction(out.prompt_text, tokens)
                if logits is not None:
                    logits.append(self._head_logits(self.classifier_inter, self.bottleneck_inter(out.feat_inter),
                                                    labels))
        return out

    def extract(self, images: torch.Tensor, aspects: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Test feature [B, W+D] (+D with the interaction head): concat of the features before or after BN
        (model.neck_feat); not normalised.

        Call ``model.eval()`` first so the BNNeck uses its running statistics.
        """
        if self.interaction is None:
            _, feat_last, feat_proj = self.image_features(images, aspects)
            if self.neck_feat == "after":
                feat_last, feat_proj = self.bottleneck(feat_last), self.bottleneck_proj(feat_proj)
            return torch.cat([feat_last, feat_proj], dim=1)
        _, feat_last, feat_proj, tokens = self._features(images, tokens=True, aspects=aspects)
        feat_inter = self.interaction(self.image_prompt_features(feat_proj, tokens, None), tokens)
        if self.neck_feat == "after":
            feat_last, feat_proj = self.bottleneck(feat_last), self.bottleneck_proj(feat_proj)
            feat_inter = self.bottleneck_inter(feat_inter)
        return torch.cat([feat_last, feat_proj, feat_inter], dim=1)

    # ---------------------------------------------------------------- text side

    def text_features(self, labels: torch.Tensor) -> torch.Tensor:
        """Projected text features [B, D] of the identities ``labels`` (indices 0..num_ids-1)."""
        labels = labels.to(self.prompt_learner.ctx.device).long()
        prompts = self.prompt_learner(labels)
        tokens = self.prompt_learner.tokenized_prompt.expand(labels.shape[0], -1)
        return self.text_encoder(prompts, tokens, length=self.prompt_learner.prompt_length)

    def image_prompt_features(self, image_proj: torch.Tensor, image_tokens: Optional[torch.Tensor],
                              labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Text features [B, D] of each image's own prompt (``model.prompt`` image or both; both needs ``labels``)."""
        ctx = None
        if self.image_prompts.learner.uses_identity:
            if labels is None:
                raise ConfigError("model.prompt 'both' puts the identity's context in the prompt, so it needs labels")
            ctx = self.prompt_learner.ctx[labels.to(self.prompt_learner.ctx.device).long()]
        return self.image_prompts(self.text_encoder, image_proj, image_tokens, ctx)

    def add_image_prompts(self, prompts: ImagePrompts, interaction: bool, arcface_scale: float = 30.0,
                          arcface_margin: float = 0.5) -> None:
        """Give each image its own prompt (``model.prompt`` image or both) and, with ``interaction``, CLIP-HandID's
        interaction network with its BNNeck and ID classifier; its feature joins the test feature."""
        self.image_prompts = prompts
        if not interaction:
            return
        self.interaction = InteractionNetwork(self.embed_dim)
        self.bottleneck_inter = nn.BatchNorm1d(self.embed_dim)
        self.bottleneck_inter.bias.requires_grad_(False)
        if self.id_head == "arcface":
            self.classifier_inter = ArcMarginProduct(self.embed_dim, self.num_ids, arcface_scale, arcface_margin)
        else:
            self.classifier_inter = linear_id_classifier(self.embed_dim, self.num_ids)
        self.feature_dim += self.embed_dim

    def all_text_features(self, batch: int = 256) -> torch.Tensor:
        """Text features of every identity, [num_ids, D] (wrap in torch.no_grad() for fixed anchors)."""
        device = self.prompt_learner.ctx.device
        chunks = [
            self.text_features(torch.arange(start, min(start + batch, self.num_ids), device=device))
            for start in range(0, self.num_ids, batch)
        ]
        return torch.cat(chunks, dim=0)

    # ---------------------------------------------------------------- training policy

    def head_modules(self) -> list[nn.Module]:
        heads = (self.bottleneck, self.bottleneck_proj, self.classifier, self.classifier_proj,
                 self.aspect_embedding, self.aspect_head, self.interaction, self.bottleneck_inter,
                 self.classifier_inter)
        return [m for m in heads if m is not None]

    def _freeze_bn_bias(self) -> None:
        for bn in (self.bottleneck, self.bottleneck_proj, self.bottleneck_inter):
            if bn is not None:
                bn.bias.requires_grad_(False)

    def freeze_all_but_prompt(self) -> None:
        """Stage 1: only the prompt context vectors learn."""
        for param in self.parameters():
            param.requires_grad_(False)
        self.prompt_learner.ctx.requires_grad_(True)

    def image_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        """Image-encoder parameter groups from input to output, for last-N unfreezing."""
        v = self.image_encoder
        if self.kind == "vit":
            return [[v.conv1, v.class_embedding, v.positional_embedding, v.ln_pre], *[[b] for b in v.transformer.resblocks]]
        # ModifiedResNet's stem is a method over its conv/bn modules; TinyConvNet's is a module.
        stem = [v.stem] if isinstance(v.stem, nn.Module) else [v.conv1, v.bn1, v.conv2, v.bn2, v.conv3, v.bn3]
        return [stem, [v.layer1], [v.layer2], [v.layer3], [v.layer4]]

    def _image_output_modules(self) -> list:
        v = self.image_encoder
        return [v.ln_post, v.proj] if self.kind == "vit" else [v.attnpool]

    def set_stage2_trainable(self, freeze_prompt: bool = True, unfreeze_last_n: Optional[int] = None) -> None:
        """Stage 2: text encoder frozen; prompt frozen unless asked; image encoder all or last N blocks; heads train.

        ``unfreeze_last_n`` counts ViT blocks (or ResNet stages); ln_post/proj (attnpool) always train.
        """
        for param in self.text_encoder.parameters():
            param.requires_grad_(False)
        self.prompt_learner.ctx.requires_grad_(not freeze_prompt)
        if unfreeze_last_n is None:
            for param in self.image_encoder.parameters():
                param.requires_grad_(True)
        else:
            if unfreeze_last_n < 0:
                raise ConfigError(f"model.unfreeze_last_n must be >= 0, got {unfreeze_last_n}")
            for param in self.image_encoder.parameters():
                param.requires_grad_(False)
            groups = self.image_groups()
            chosen = groups[len(groups) - min(unfreeze_last_n, len(groups)):] if unfreeze_last_n else []
            for item in [x for group in chosen for x in group] + self._image_output_modules():
                params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
                for param in params:
                    param.requires_grad_(True)
        for module in self.head_modules():
            for param in module.parameters():
                param.requires_grad_(True)
        if self.image_prompts is not None:
            self.image_prompts.set_trainable()
        self._freeze_bn_bias()


# ------------------------------------------------------------------------------------------------


def _section_dict(section, name: str) -> dict:
    if section is None:
        return {}
    if hasattr(section, "model_dump"):
        return section.model_dump(mode="json")
    if isinstance(section, dict):
        return dict(section)
    raise ConfigError(f"{name} must be a config section or a dict, not {type(section).__name__}")


def _validated(cls, section, name: str):
    if isinstance(section, cls):
        return section
    try:
        return cls.model_validate(_section_dict(section, name))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join([name, *(str(part) for part in err["loc"])])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{key}: {'unknown key' if err['type'] == 'extra_forbidden' else msg}") from None


def build_model(model_cfg, data_cfg, num_ids: int) -> HandCLIP:
    """Build HandCLIP from the ``model`` and ``data`` config sections (pydantic objects or dicts)."""
    model_cfg = _validated(ModelConfig, model_cfg, "model")
    data_cfg = _validated(DataConfig, data_cfg, "data")
    clip = create_clip(
        model_cfg.backbone,
        weights=model_cfg.weights,
        image_size=tuple(data_cfg.image_size),
        patch_stride=model_cfg.patch_stride,
        rn_last_stride=model_cfg.rn_last_stride,
        allow_unsafe_weights=model_cfg.allow_unsafe_weights,
        pos_embed_interpolation=model_cfg.pos_embed_interpolation,
        allow_activation_mismatch=model_cfg.allow_activation_mismatch,
    )
    model = HandCLIP(
        clip,
        get_tokenizer(model_cfg.backbone),
        num_ids=num_ids,
        n_ctx=model_cfg.n_ctx,
        prompt_template=model_cfg.prompt_template,
        neck_feat=model_cfg.neck_feat,
        id_head=model_cfg.id_head,
        arcface_scale=model_cfg.arcface_scale,
        arcface_margin=model_cfg.arcface_margin,
        sie=model_cfg.sie,
        sie_coe=model_cfg.sie_coe,
        aspect_head=model_cfg.aspect_head,
    )
    if model_cfg.prompt != "identity":
        # Built after every other part, so that the identity model's random draws are unchanged.
        prompts = build_image_prompts(model_cfg, get_tokenizer(model_cfg.backbone), clip.token_embedding,
                                      model.embed_dim)
        model.add_image_prompts(prompts, model_cfg.interaction, model_cfg.arcface_scale, model_cfg.arcface_margin)
    model.spec = {
        "model": model_cfg.model_dump(mode="json"),
        "image_size": list(data_cfg.image_size),
        "pixel_mean": list(data_cfg.pixel_mean),
        "pixel_std": list(data_cfg.pixel_std),
        # The evaluation transform's resize: what enrolment, search and evaluation must repeat.
        "interpolation": data_cfg.interpolation.model_dump(mode="json"),
        "cache_resolution": data_cfg.cache_resolution,
        "num_ids": int(num_ids),
        "feature_dim": model.feature_dim,
        "embed_dim": model.embed_dim,
        "width": model.width,
        "kind": model.kind,
        "weights_source": clip.handclip_geometry["weights"],
    }
    return model
