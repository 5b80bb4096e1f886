"""Image-conditioned prompts (docs/method.md, "Image-conditioned prompts").

An inversion network maps an image's projected feature (``InversionMLP``, CLIP-HandID's) or its projected
tokens (``InversionTransformer``) to N pseudo-word embeddings; ``ImagePromptLearner`` puts them at the ``*``
positions of a template such as "A photo of a * hand." (and, for ``model.prompt: both``, the identity's
learnt context at its X positions); CLIP's frozen text encoder reads the prompt up to its end-of-text
token. ``InteractionNetwork`` lets that text feature attend over the same image's projected tokens.

Every part trains: the text path keeps its graph unless ``model.inversion_grad`` is false, which runs it
under ``no_grad`` as CLIP-HandID's released code does (its inversion network then never moves). Each
pseudo-word ends in a LayerNorm whose gain and bias start at the spread and mean of CLIP's own word
embeddings, so a pseudo-word starts at the scale of a real word.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config_prompts import PLACEHOLDER, image_prompt_template
from ..errors import ConfigError


def attention_heads(width: int) -> int:
    """The most heads, of 8, 4, 2 and 1, that divide ``width``."""
    return next(h for h in (8, 4, 2, 1) if width % h == 0)


def word_scale_norm(width: int, token_embedding: nn.Embedding) -> nn.LayerNorm:
    """A LayerNorm whose output starts with the mean and spread of CLIP's word embeddings."""
    norm = nn.LayerNorm(width)
    with torch.no_grad():
        table = token_embedding.weight.detach().float()
        norm.weight.fill_(float(table.std()))
        norm.bias.copy_(table.mean(0))
    return norm


class InversionMLP(nn.Module):
    """CLIP-HandID's inversion network: (Linear, LayerNorm, GELU, Dropout) twice, then Linear to N pseudo-words,
    each through a word-scale LayerNorm. Input: the projected image feature [B, D]; hidden width 4 D."""

    reads_tokens = False

    def __init__(self, in_dim: int, tokens: int, width: int, token_embedding: nn.Embedding, dropout: float = 0.5):
        super().__init__()
        hidden = 4 * in_dim
        self.tokens, self.width = tokens, width
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, tokens * width),
        )
        self.out_norm = word_scale_norm(width, token_embedding)

    def forward(self, image_proj: torch.Tensor, image_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.body(image_proj).view(image_proj.shape[0], self.tokens, self.width)
        return self.out_norm(x)


class InversionTransformer(nn.Module):
    """N learnt queries and the image's projected tokens through a small transformer encoder (3 post-norm
    layers, feed-forward 4x, dropout 0.1, as CLIP-HandID's unused variant); the queries' outputs become the
    pseudo-words (Linear to the word width, then a word-scale LayerNorm)."""

    reads_tokens = True

    def __init__(self, in_dim: int, tokens: int, width: int, token_embedding: nn.Embedding, layers: int = 3):
        super().__init__()
        self.tokens = tokens
        self.input = nn.Sequential(nn.Linear(in_dim, in_dim), nn.LayerNorm(in_dim), nn.GELU())
        self.queries = nn.Parameter(torch.randn(tokens, in_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(in_dim, attention_heads(in_dim), 4 * in_dim, dropout=0.1,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.output = nn.Linear(in_dim, width)
        self.out_norm = word_scale_norm(width, token_embedding)

    def forward(self, image_proj: torch.Tensor, image_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        if image_tokens is None:
            image_tokens = image_proj.unsqueeze(1)
        queries = self.queries.to(image_tokens.dtype).unsqueeze(0).expand(image_tokens.shape[0], -1, -1)
        x = self.encoder(torch.cat([queries, self.input(image_tokens)], dim=1))
        return self.out_norm(self.output(x[:, :self.tokens]))


def _run_of(tokens: torch.Tensor, token_id: int, count: int, what: str, template: str) -> Optional[int]:
    """Start of the ``count`` consecutive ``token_id`` positions in ``tokens`` (None when count is 0)."""
    positions = (tokens == token_id).nonzero().flatten().tolist()
    if len(positions) != count or (positions and positions[-1] - positions[0] != count - 1):
        raise ConfigError(f"model.image_prompt_template '{template}' must hold exactly {count} consecutive "
                          f"'{what}' placeholders (found {len(positions)})")
    return positions[0] if positions else None


class ImagePromptLearner(nn.Module):
    """The template's token embeddings (CLIP's own, fixed) with pseudo-words at its ``*`` positions and, for
    ``both``, an identity's context at its X positions; kept only up to the end-of-text token."""

    def __init__(self, template: str, n_ctx: int, tokens: int, tokenizer, token_embedding: nn.Embedding):
        super().__init__()
        ids = tokenizer([template]).long()[0]
        self.length = int(ids.argmax()) + 1  # up to and including the end-of-text token
        star = _run_of(ids, int(tokenizer([PLACEHOLDER])[0, 1]), tokens, PLACEHOLDER, template)
        ctx = _run_of(ids, int(tokenizer(["X"])[0, 1]), n_ctx, "X", template)
        self.slots = sorted([(star, tokens, "pseudo")] + ([(ctx, n_ctx, "ctx")] if ctx is not None else []))
        self.template = template
        with torch.no_grad():
            embedded = token_embedding(ids[None, :self.length]).detach().clone()[0]
        self.register_buffer("template_embedding", embedded)  # [L, width]
        self.register_buffer("tokenized_prompt", ids[None, :self.length])

    @property
    def uses_identity(self) -> bool:
        return any(kind == "ctx" for _, _, kind in self.slots)

    def forward(self, pseudo: torch.Tensor, ctx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Prompt embeddings [B, L, width] from pseudo-words [B, N, width] (and contexts [B, n_ctx, width])."""
        batch, fixed = pseudo.shape[0], self.template_embedding
        pieces, cursor = [], 0
        for start, count, kind in self.slots:
            pieces.append(fixed[cursor:start].expand(batch, -1, -1))
            pieces.append(pseudo if kind == "pseudo" else ctx)
            cursor = start + count
        pieces.append(fixed[cursor:].expand(batch, -1, -1))
        return torch.cat([p.to(fixed.dtype) for p in pieces], dim=1)


class ImagePrompts(nn.Module):
    """Inversion network + prompt learner: the text feature [B, D] of each image's own prompt."""

    def __init__(self, inversion: nn.Module, learner: ImagePromptLearner, grad: bool, channel_mean: bool):
        super().__init__()
        self.inversion = inversion
        self.learner = learner
        self.grad = grad
        self.channel_mean = channel_mean

    @property
    def reads_tokens(self) -> bool:
        return self.inversion.reads_tokens

    def set_trainable(self) -> None:
        """The inversion network learns only when gradients reach it (``model.inversion_grad``)."""
        for param in self.inversion.parameters():
            param.requires_grad_(self.grad)

    def forward(self, text_encoder: nn.Module, image_proj: torch.Tensor, image_tokens: Optional[torch.Tensor] = None,
                ctx: Optional[torch.Tensor] = None) -> torch.Tensor:
        # inversion_grad false: CLIP-HandID's no_grad text path, so neither the inversion network nor (through
        # this path) the image encoder gets a gradient from the text side.
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            pseudo = self.inversion(image_proj, image_tokens)
            if self.channel_mean:
                # CLIP-HandID's released code averages its one token's vector over its entries.
                pseudo = pseudo.mean(dim=-1, keepdim=True).expand_as(pseudo)
            prompts = self.learner(pseudo, ctx)
            tokens = self.learner.tokenized_prompt.expand(prompts.shape[0], -1)
            return text_encoder(prompts, tokens, length=self.learner.length)


class InteractionNetwork(nn.Module):
    """The text feature of an image's prompt attends over that image's projected tokens (one pre-norm
    cross-attention block with a feed-forward layer, residual from the text feature); output [B, D]."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm_text = nn.LayerNorm(dim)
        self.norm_image = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, attention_heads(dim), batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, text: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        query = text.unsqueeze(1).to(image_tokens.dtype)
        keys = self.norm_image(image_tokens)
        x = query + self.attention(self.norm_text(query), keys, keys, need_weights=False)[0]
        x = x + self.ff(self.norm_ff(x))
        return x[:, 0]


def attention_pool_tokens(pool: nn.Module, x: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
    """Every output of CLIP's attention pool (open_clip's ``AttentionPool2d``) as [B, HW+1, D]: the pooled
    feature first (what the pool itself returns), then one per map position. ``side`` [B, C], an aspect
    embedding (``aspect_embedding``), is added to the pool's query token (the spatial mean)."""
    x = x.flatten(2).permute(2, 0, 1)  # [HW, B, C]
    query = x.mean(dim=0, keepdim=True)
    if side is not None:
        query = query + side[None].to(x.dtype)
    x = torch.cat([query, x], dim=0) + pool.positional_embedding[:, None, :].to(x.dtype)
    out, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=pool.training, need_weights=False)
    return out.permute(1, 0, 2)


def build_image_prompts(model_cfg, tokenizer, token_embedding: nn.Embedding, embed_dim: int) -> ImagePrompts:
    """The inversion network and prompt learner ``model_cfg`` asks for (``model.prompt`` image or both)."""
    width = token_embedding.weight.shape[1]
    tokens = model_cfg.inversion_tokens
    if model_cfg.inversion == "mlp":
        inversion = InversionMLP(embed_dim, tokens, width, token_embedding, model_cfg.inversion_dropout)
    else:
        inversion = InversionTransformer(embed_dim, tokens, width, token_embedding)
    template = image_prompt_template(model_cfg.prompt, model_cfg.n_ctx, tokens, model_cfg.image_prompt_template)
    n_ctx = model_cfg.n_ctx if model_cfg.prompt == "both" else 0
    learner = ImagePromptLearner(template, n_ctx, tokens, tokenizer, token_embedding)
    prompts = ImagePrompts(inversion, learner, model_cfg.inversion_grad, model_cfg.inversion_channel_mean)
    prompts.set_trainable()
    return prompts
