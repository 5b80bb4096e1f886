"""A ViT block's inference forward with fused scaled-dot-product attention, for autocast.

open_clip's ``ResidualAttentionBlock`` attends through ``nn.MultiheadAttention``. In fp32 inference that
takes PyTorch's fused "fast path"; under autocast the fast path is disabled and the general path
transposes to sequence-first and back, copying every activation (on the 2-core AVX512-BF16 CPU, 2/3 of a
bf16 ViT-B/16 forward went into those copies; docs/method.md, "Feature precision and engines").
``block_forward`` computes the same block from the same parameters batch-first, with
``F.scaled_dot_product_attention``, so bf16 inference runs at the speed the hardware allows. Training
and fp32 inference keep open_clip's own forward (its fp32 features are unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock


def sdpa_applies(block, x: torch.Tensor, training: bool) -> bool:
    """Whether ``block_forward`` computes exactly what ``block(x)`` does and is worth it: inference under
    autocast, batch-first, on a plain self-attention block (no cross-attention, no extra key/value biases)."""
    if training or not torch.is_autocast_enabled(x.device.type) or type(block) is not ResidualAttentionBlock:
        return False
    attn = block.attn
    return (attn.batch_first and attn._qkv_same_embed_dim and attn.bias_k is None and not attn.add_zero_attn
            and not hasattr(block, "ln_1_kv"))


def block_forward(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for a batch-first x [B, N, C], attention by ``F.scaled_dot_product_attention``."""
    attn = block.attn
    batch, tokens, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
    x = x + block.ls_1(attn.out_proj(attended))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
