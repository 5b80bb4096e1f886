"""With ``model.sie: aspect`` HandCLIP computes what CLIP-ReID's SIE computes for the same camera labels
(the aspect as the camera); with the default ``model.sie: none`` it computes exactly what it computed
before aspects existed. Expected values come from CLIP-ReID's forward written out here: its ViT adds
``sie_coe * cv_embed[cam_label]`` to the class token after prepending it and before the positional
embedding, and tests on the features it returns (CLS after block 11, after ln_post, projected)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from handclip.config import SyntheticConfig
from handclip.model.aspect_embedding import attention_pool
from handclip.model.handclip import build_model

from training_helpers import base_config, make_context, tiny_manifest  # noqa: F401 - fixture


def _clipreid_vit(model, images: torch.Tensor, cam_label: torch.Tensor | None, sie_coe: float):
    """CLIP-ReID's ``build_transformer`` image path for a ViT, from its description (not its code): the
    three features it returns and the eval feature with neck_feat 'before'."""
    v = model.image_encoder
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1)
    if cam_label is not None:
        cv_embed = sie_coe * model.aspect_embedding.weight[cam_label]  # cv_embed[cam_label], scaled
        x = x.clone()
        x[:, 0] = x[:, 0] + cv_embed
    x = v.ln_pre(x + v.positional_embedding)
    if not getattr(v.transformer, "batch_first", True):
        x = x.permute(1, 0, 2)
    for block in v.transformer.resblocks[:-1]:
        x = block(x)
    x11 = x
    x12 = v.transformer.resblocks[-1](x11)
    if not getattr(v.transformer, "batch_first", True):
        x11, x12 = x11.permute(1, 0, 2), x12.permute(1, 0, 2)
    x12 = v.ln_post(x12)
    proj = x12 @ v.proj
    mid, last, projected = x11[:, 0], x12[:, 0], proj[:, 0]
    return mid, last, projected, torch.cat([last, projected], dim=1)


@pytest.fixture(scope="module")
def aspect_manifest(tmp_path_factory):
    """8 training identities x 3 images in all four aspects, 4 test identities, 32x32, 2 runs."""
    from handclip.synthetic.dataset import prepare_synthetic

    root = tmp_path_factory.mktemp("aspects")
    cfg = SyntheticConfig(train_ids=8, test_ids=4, images_per_id=3, image_size=32,
                          aspects=("dorsal_r", "dorsal_l", "palmar_r", "palmar_l"))
    path = root / "manifest.csv"
    prepare_synthetic(root / "images", cfg, runs=2, seed=0).write(path)
    return path


def test_sie_adds_the_scaled_aspect_vector_to_the_class_token_as_clip_reid():
    torch.manual_seed(0)
    model = build_model({"backbone": "tiny-vit", "sie": "aspect"}, {"image_size": [32, 32]}, num_ids=3).eval()
    embedding = model.aspect_embedding
    assert tuple(embedding.weight.shape) == (4, model.width) and embedding.coefficient == 3.0  # CLIP-ReID's SIE_COE
    # trunc_normal_(std=.02): small, centred, inside +-2 (absolute bounds, as timm's)
    weight = embedding.weight.detach()
    assert 0.01 < float(weight.std()) < 0.03 and float(weight.abs().max()) <= 2.0
    images, cams = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        mid, last, projected, feature = _clipreid_vit(model, images, cams, 3.0)
        out = model(images, aspects=cams)
        torch.testing.assert_close(out.feat_mid, mid, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.feat_last, last, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.feat_proj, projected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.extract(images, aspects=cams), feature, atol=1e-5, rtol=1e-5)
        # No camera label: nothing is added (CLIP-ReID's cam_label=None, e.g. its stage-1 encoding).
        torch.testing.assert_close(model.extract(images), _clipreid_vit(model, images, None, 3.0)[3],
                                   atol=1e-5, rtol=1e-5)
        # The label matters, and so does the coefficient.
        assert not torch.allclose(model.extract(images, aspects=cams), model.extract(images, aspects=cams.flip(0)))
    scaled = build_model({"backbone": "tiny-vit", "sie": "aspect", "sie_coe": 1.0}, {"image_size": [32, 32]}, 3).eval()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(scaled.extract(images, aspects=cams), _clipreid_vit(model, images, cams, 1.0)[3],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-rn", "tiny-cnn"])
def test_default_sie_none_computes_what_the_model_always_computed(backbone):
    def build(**model):
        torch.manual_seed(0)
        return build_model({"backbone": backbone, **model}, {"image_size": [64, 64]}, num_ids=3).eval()

    plain, with_sie = build(), build(sie="aspect")
    assert plain.aspect_embedding is None and plain.aspect_head is None
    assert not any("aspect" in key for key in plain.state_dict())  # checkpoints keep their keys
    # The aspect embedding is built last: every other weight is drawn exactly as before.
    shared = {k: v for k, v in with_sie.state_dict().items() if not k.startswith("aspect_embedding.")}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in shared.items())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain.extract(images), with_sie.extract(images))  # no aspect given: nothing added
        assert torch.equal(plain.extract(images, aspects=torch.tensor([1, 2])), plain.extract(images))


def test_resnet_side_information_enters_the_attention_pool_query_only():
    torch.manual_seed(0)
    model = build_model({"backbone": "tiny-rn", "sie": "aspect"}, {"image_size": [64, 64]}, num_ids=3).eval()
    pool = model.image_encoder.attnpool
    x = torch.randn(2, pool.k_proj.in_features, *model.image_encoder.feature_map_size)
    with torch.no_grad():
        # The pool written out gives open_clip's own output when nothing is added ...
        torch.testing.assert_close(attention_pool(pool, x, torch.zeros(2, x.shape[1])), pool(x), atol=1e-5, rtol=1e-5)
        # ... and adding to the query token is adding to the spatial mean before the positional embedding.
        side = torch.randn(2, x.shape[1])
        tokens = x.flatten(2).permute(2, 0, 1)
        manual = torch.cat([tokens.mean(0, keepdim=True) + side[None], tokens]) + pool.positional_embedding[:, None]
        q = F.linear(manual[:1], pool.q_proj.weight, pool.q_proj.bias)
        k = F.linear(manual, pool.k_proj.weight, pool.k_proj.bias)
        val = F.linear(manual, pool.v_proj.weight, pool.v_proj.bias)
        heads, width = pool.num_heads, x.shape[1]
        split = lambda t: t.reshape(t.shape[0], 2 * heads, width // heads).transpose(0, 1)  # noqa: E731
        attended = F.scaled_dot_product_attention(split(q), split(k), split(val))
        expected = pool.c_proj(attended.transpose(0, 1).reshape(1, 2, width))[0]
        torch.testing.assert_close(attention_pool(pool, x, side), expected, atol=1e-5, rtol=1e-5)
        images = torch.randn(2, 3, 64, 64)
        a, b = model(images, aspects=torch.tensor([0, 0])), model(images, aspects=torch.tensor([0, 3]))
    assert torch.equal(a.feat_last, b.feat_last) and torch.equal(a.feat_mid, b.feat_mid)  # below the pool: no SIE
    assert torch.equal(a.feat_proj[0], b.feat_proj[0]) and not torch.allclose(a.feat_proj[1], b.feat_proj[1])


def test_training_with_aspects_needs_them_and_refuses_a_mirroring_augmentation(aspect_manifest, tiny_manifest):
    from handclip.data.manifest import Manifest
    from handclip.errors import ConfigError, DataError
    from handclip.train.engine import check_training_aspects

    config = base_config(aspect_manifest, model={"sie": "aspect"})
    with pytest.raises(ConfigError, match="hflip_p 0.5 mirrors training images"):
        check_training_aspects(Manifest.read(aspect_manifest), config.model, config.data.augment)
    config = base_config(tiny_manifest, model={"aspect_head": True}, data={"augment": {"hflip_p": 0.0}})
    with pytest.raises(DataError, match="model.aspect_head needs each training image's aspect"):
        check_training_aspects(Manifest.read(tiny_manifest), config.model, config.data.augment)


def test_stage2_gives_the_model_each_training_image_aspect(aspect_manifest):
    from handclip.aspects import ASPECTS, record_aspect
    from handclip.train.stage2 import Stage2Trainer

    ctx = make_context(base_config(aspect_manifest, model={"backbone": "tiny-vit", "sie": "aspect",
                                                           "aspect_head": True}, data={"augment": {"hflip_p": 0.0}}))
    trainer = Stage2Trainer(ctx)
    expected = [ASPECTS.index(record_aspect(r)) for r in ctx.train_records]
    assert trainer.train_aspects.tolist() == expected
    assert {"aspect_embedding.weight", "aspect_head.linear.weight"} <= {
        n for g in trainer.optimizers.main.param_groups for n, p in ctx.model.named_parameters()
        if any(p is q for q in g["params"])}
    seen = {}
    forward = trainer.forward_model

    def spy(*args, **kwargs):
        seen.update(kwargs)
        seen["out"] = forward(*args, **kwargs)
        return seen["out"]

    trainer.forward_model = spy
    torch.manual_seed(0)
    images, labels, cams = torch.randn(8, 3, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([0, 1] * 4)
    terms = trainer.compute_losses(images, labels, cams)
    assert torch.equal(seen["aspects"], cams)
    assert terms["aspect"].item() == pytest.approx(F.cross_entropy(seen["out"].aspect_logits, cams).item(), rel=1e-6)
    # The aspect head is a classifier of its own: its loss gives the image encoder no gradient.
    ctx.model.zero_grad()
    terms["aspect"].backward()
    assert all(p.grad is None or not p.grad.any() for p in ctx.model.image_encoder.parameters())
    assert ctx.model.aspect_head.linear.weight.grad.abs().sum() > 0
    groups = {g["name"]: g for g in trainer.optimizers.main.param_groups}
    assert groups["aspect_head"]["initial_lr"] == ctx.config.stage2.aspect_head_lr == 1e-3


@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-rn"])
def test_the_token_path_of_image_prompts_sees_the_same_aspect_embedding(backbone):
    """Image-conditioned prompts read every projected token (``_features(tokens=True)``); with SIE its pooled
    feature is the one the plain path gives for the same aspects, and the aspect reaches the tokens."""
    torch.manual_seed(0)
    model = build_model({"backbone": backbone, "sie": "aspect"}, {"image_size": [64, 64]}, num_ids=3).eval()
    images, cams = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    with torch.no_grad():
        _, _, plain_proj, none = model._features(images, tokens=False, aspects=cams)
        _, _, token_proj, tokens = model._features(images, tokens=True, aspects=cams)
        _, _, _, other_tokens = model._features(images, tokens=True, aspects=cams.flip(0))
    assert none is None
    torch.testing.assert_close(token_proj, plain_proj, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[:, 0], plain_proj, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tokens, other_tokens)


def test_bf16_inference_with_fused_attention_adds_the_aspect_as_the_plain_blocks_do(monkeypatch):
    """CPU inference at bf16 runs a ViT's blocks through the fused attention (model/attention.py); the aspect
    embedding enters before the blocks, so the fused path sees it exactly as the plain blocks under the
    same autocast do, and stays within bf16's reach of CLIP-ReID's fp32 SIE forward."""
    import handclip.model.handclip as handclip_module
    from handclip.model.attention import sdpa_applies

    torch.manual_seed(0)
    model = build_model({"backbone": "tiny-vit", "sie": "aspect"}, {"image_size": [32, 32]}, num_ids=3).eval()
    images, cams = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        blocks = model.image_encoder.transformer.resblocks
        assert sdpa_applies(blocks[0], torch.zeros(1, 2, model.width, dtype=torch.bfloat16), False)  # fused here
        fused = model.extract(images, aspects=cams).float()
        other_aspects = model.extract(images, aspects=cams.flip(0)).float()
        monkeypatch.setattr(handclip_module, "sdpa_applies", lambda *args: False)
        plain = model.extract(images, aspects=cams).float()
    torch.testing.assert_close(fused, plain, atol=0.05, rtol=0.05)
    assert F.cosine_similarity(fused, plain).min() > 0.999
    assert F.cosine_similarity(fused, other_aspects).min() < F.cosine_similarity(fused, plain).min()  # label counts
    with torch.no_grad():
        reference = _clipreid_vit(model, images, cams, 3.0)[3]
    assert F.cosine_similarity(fused, reference).min() > 0.99
