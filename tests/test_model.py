"""HandCLIP: image features, BNNeck and ID heads, identity prompts, freezing policy."""

import math

import pytest
import torch
import torch.nn.functional as F

from handclip.config import ModelConfig, Stage2Config
from handclip.errors import ConfigError
from handclip.model.handclip import HandCLIP, ModelOutput, build_model
from handclip.train.losses import text_id_logits
from handclip.train.optim import stage2_param_groups

HEADS = ("bottleneck", "classifier")  # BNNeck and ID classifiers: the parameters outside CLIP

NUM_IDS = 6


def make(backbone="tiny-vit", num_ids=NUM_IDS, image_size=(64, 64), **model):
    torch.manual_seed(0)
    return build_model({"backbone": backbone, **model}, {"image_size": list(image_size)}, num_ids)


@pytest.fixture(scope="module")
def vit():
    return make("tiny-vit")


@pytest.fixture(scope="module")
def rn():
    return make("tiny-rn")


# ---------------------------------------------------------------------------- text side


def test_eot_position_is_argmax_of_tokens(vit):
    learner = vit.prompt_learner
    tokens = learner.tokenized_prompt[0]
    eot = learner.eot_index
    assert int(tokens[eot]) == 49407  # CLIP's end-of-text id
    assert eot == 1 + 4 + 4 + 2  # SOS, "a photo of a", 4 context slots, "hand", "."
    # Prompt layout: prefix (SOS + 4 words) + n_ctx + suffix fills the context exactly.
    assert learner.token_prefix.shape[1] == 5
    assert learner.token_prefix.shape[1] + learner.n_ctx + learner.token_suffix.shape[1] == tokens.shape[0]
    assert learner.ctx.shape == (NUM_IDS, 4, 128)
    assert 0.015 < float(learner.ctx.std()) < 0.025


def test_text_features_differ_between_identities(vit):
    vit.eval()
    with torch.no_grad():
        feats = vit.all_text_features(batch=4)
    assert feats.shape == (NUM_IDS, vit.embed_dim)
    distances = torch.cdist(feats, feats)
    off_diagonal = distances[~torch.eye(NUM_IDS, dtype=torch.bool)]
    # Reading the start token would make every identity's feature identical (distance 0).
    assert off_diagonal.min() > 1e-3 * feats.norm(dim=1).mean()


def test_changing_one_context_changes_only_that_identity(vit):
    vit.eval()
    with torch.no_grad():
        before = vit.all_text_features()
        original = vit.prompt_learner.ctx[2].clone()
        vit.prompt_learner.ctx[2] += 0.5 * torch.randn_like(original)
        after = vit.all_text_features()
        vit.prompt_learner.ctx[2] = original
    changed = (after - before).abs().amax(dim=1)
    assert changed[2] > 1e-3
    assert torch.all(changed[[0, 1, 3, 4, 5]] == 0)


def test_text_encoder_stops_at_end_of_text_exactly(vit):
    """The text encoder runs only up to the end-of-text token; under the causal mask that must give the
    features the full 77-position pass gives."""
    vit.eval()
    labels = torch.arange(NUM_IDS)
    learner = vit.prompt_learner
    assert learner.prompt_length == learner.eot_index + 1 < learner.tokenized_prompt.shape[1]
    with torch.no_grad():
        prompts = learner(labels)
        tokens = learner.tokenized_prompt.expand(NUM_IDS, -1)
        full = vit.text_encoder(prompts, tokens)
        cut = vit.all_text_features()
    assert prompts.shape[1] == 77
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)


def test_text_feature_is_read_at_eot_not_at_start(vit):
    """Under the causal mask, position 0 never sees the context; the EOT position does."""
    enc = vit.text_encoder
    labels = torch.arange(NUM_IDS)
    with torch.no_grad():
        prompts = vit.prompt_learner(labels)
        x = enc.transformer(prompts + enc.positional_embedding, attn_mask=enc.attn_mask)
    assert torch.allclose(x[0, 0], x[1, 0], atol=1e-6)  # start token: same for every identity
    eot = vit.prompt_learner.eot_index
    assert not torch.allclose(x[0, eot], x[1, eot], atol=1e-4)


def test_prompt_template_needs_consecutive_placeholders():
    with pytest.raises(ConfigError, match="consecutive 'X'"):
        make(prompt_template="A X photo X of X a X hand.")
    model = make(prompt_template="X X a hand", n_ctx=2)
    assert model.prompt_learner.token_prefix.shape[1] == 1  # just SOS


# ---------------------------------------------------------------------------- image side


@pytest.mark.parametrize("name", ["vit", "rn"])
def test_training_output_shapes_and_logits(name, request):
    model = request.getfixturevalue(name)
    model.train()
    out = model(torch.randn(4, 3, 64, 64))
    assert isinstance(out, ModelOutput)
    assert out.feat_last.shape == (4, model.width)
    assert out.feat_proj.shape == (4, model.embed_dim)
    assert out.image_proj is out.feat_proj
    assert [tuple(l.shape) for l in out.logits] == [(4, NUM_IDS), (4, NUM_IDS)]
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).logits is None


def test_feature_widths():
    vit, rn = make("tiny-vit"), make("tiny-rn")
    assert (vit.width, vit.embed_dim, vit.feature_dim) == (192, 128, 320)
    assert (rn.width, rn.embed_dim, rn.feature_dim) == (1024, 128, 1152)


def test_vit_features_follow_open_clip_blocks(vit):
    """feat_proj equals open_clip's own image tower; feat_mid is the CLS after the second-to-last block."""
    vit.eval()
    v = vit.image_encoder
    images = torch.randn(2, 3, 64, 64)
    seen = {}
    handle = v.transformer.resblocks[-2].register_forward_hook(lambda m, i, o: seen.__setitem__("mid", o) or None)
    with torch.no_grad():
        out = vit(images)
        reference = v(images)
    handle.remove()
    torch.testing.assert_close(out.feat_proj, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.feat_mid, seen["mid"][:, 0], atol=1e-6, rtol=1e-6)


def test_bnneck_bias_frozen_and_classifier_init():
    model = make(num_ids=300)
    for bn in (model.bottleneck, model.bottleneck_proj):
        assert not bn.bias.requires_grad and bn.weight.requires_grad
    for classifier in (model.classifier, model.classifier_proj):
        assert classifier.bias is None
        assert abs(float(classifier.weight.std()) - 0.001) < 0.0001
    model.freeze_all_but_prompt()
    model.set_stage2_trainable(freeze_prompt=False)
    assert not model.bottleneck.bias.requires_grad and not model.bottleneck_proj.bias.requires_grad


def test_extract_dims_and_neck_feat_before_after():
    before, after = make(neck_feat="before"), make(neck_feat="after")
    after.load_state_dict(before.state_dict())
    before.train()
    with torch.no_grad():
        for _ in range(3):  # give the BNNeck real running statistics
            before(torch.randn(8, 3, 64, 64))
    after.load_state_dict(before.state_dict())
    before.eval(), after.eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feat_before, feat_after = before.extract(images), after.extract(images)
        out = before(images)
    assert feat_before.shape == feat_after.shape == (3, 192 + 128)
    torch.testing.assert_close(feat_before, torch.cat([out.feat_last, out.feat_proj], 1))
    torch.testing.assert_close(feat_after, torch.cat([out.bn_last, out.bn_proj], 1))
    assert (feat_before - feat_after).abs().max() > 1e-2


def test_arcface_head_applies_margin_to_true_class():
    model = make(id_head="arcface", arcface_scale=10.0, arcface_margin=0.3)
    model.train()
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(3)
    with_margin = model(images, labels).logits
    torch.manual_seed(3)
    plain = model(images).logits
    for m, p in zip(with_margin, plain):
        assert m.shape == (4, NUM_IDS)
        # The true class's angle grows by the margin: s cos(theta + m), not a cosine shifted by m (CosFace).
        theta = torch.acos(p.gather(1, labels[:, None]) / 10.0)
        assert (theta + 0.3 < math.pi).all()  # inside the range where ArcFace needs no fallback
        torch.testing.assert_close(m.gather(1, labels[:, None]), 10.0 * torch.cos(theta + 0.3), rtol=0, atol=1e-4)
        others = torch.ones_like(m, dtype=torch.bool).scatter_(1, labels[:, None], False)
        torch.testing.assert_close(m[others], p[others])
        assert p.abs().max() <= 10.0 + 1e-4  # scaled cosine


def test_text_id_head_has_no_classifier_and_scores_against_text():
    model = make(id_head="text")
    assert model.classifier is None and model.classifier_proj is None
    assert [n for n, _ in model.named_parameters() if n.startswith(HEADS)] == [
        "bottleneck.weight", "bottleneck.bias", "bottleneck_proj.weight", "bottleneck_proj.bias"]
    model.train()
    out = model(torch.randn(4, 3, 64, 64))
    assert out.logits is None
    with torch.no_grad():
        text = model.all_text_features()
    logits = text_id_logits(out.image_proj, text, model.logit_scale.exp())
    assert logits.shape == (4, NUM_IDS)
    expected = F.normalize(out.image_proj, dim=1) @ F.normalize(text, dim=1).T * model.logit_scale.exp()
    torch.testing.assert_close(logits, expected)


def test_id_loss_gradients_reach_heads_and_bnneck():
    model = make()
    model.set_stage2_trainable()
    model.train()
    out = model(torch.randn(4, 3, 64, 64))
    loss = sum(F.cross_entropy(l, torch.tensor([0, 1, 2, 3])) for l in out.logits)
    loss.backward()
    for name, param in model.named_parameters():
        if not name.startswith(HEADS) or not param.requires_grad:
            continue
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.image_encoder.conv1.weight.grad.abs().sum() > 0


def test_prompt_gradients_reach_only_the_identities_in_the_batch():
    model = make()
    model.freeze_all_but_prompt()
    image_proj = torch.randn(3, model.embed_dim)
    labels = torch.tensor([0, 2, 2])
    text = model.text_features(labels)
    loss = -F.cosine_similarity(image_proj, text).sum()
    loss.backward()
    grad = model.prompt_learner.ctx.grad.abs().sum(dim=(1, 2))
    assert grad[0] > 0 and grad[2] > 0
    assert torch.all(grad[[1, 3, 4, 5]] == 0)
    assert all(p.grad is None for p in model.text_encoder.parameters())


# ---------------------------------------------------------------------------- freezing and optimizer groups


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _grouped(model):
    """Names of the parameters in stage 2's optimizer groups (the groups training really uses)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in stage2_param_groups(model, Stage2Config()) for p in group["params"]]


def test_stage1_trains_only_the_prompt():
    model = make()
    model.freeze_all_but_prompt()
    assert _trainable(model) == {"prompt_learner.ctx"}


@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-rn", "tiny-cnn"])
def test_stage2_policy_and_groups_cover_every_trainable_parameter(backbone):
    model = make(backbone)
    model.set_stage2_trainable(freeze_prompt=True, unfreeze_last_n=None)
    trainable = _trainable(model)
    assert not any(n.startswith("text_encoder.") for n in trainable)
    assert "prompt_learner.ctx" not in trainable
    assert all(p.requires_grad for p in model.image_encoder.parameters())
    assert sorted(_grouped(model)) == sorted(trainable)  # nothing trainable is left out of an optimizer group

    model.set_stage2_trainable(freeze_prompt=False, unfreeze_last_n=1)
    trainable = _trainable(model)
    assert "prompt_learner.ctx" in trainable
    assert not any(n.startswith("text_encoder.") for n in trainable)
    image = {n for n in trainable if n.startswith("image_encoder.")}
    if backbone == "tiny-vit":
        last = len(model.image_encoder.transformer.resblocks) - 1
        assert image and all(
            n.startswith((f"image_encoder.transformer.resblocks.{last}.", "image_encoder.ln_post", "image_encoder.proj"))
            for n in image
        )
        assert "image_encoder.ln_post.weight" in image and "image_encoder.proj" in image
    else:
        assert image and all(n.startswith(("image_encoder.layer4.", "image_encoder.attnpool.")) for n in image)
    assert sorted(_grouped(model)) == sorted(trainable)


def test_build_model_accepts_pydantic_and_dict_sections():
    from handclip.config import DataConfig

    a = build_model(ModelConfig(backbone="tiny-rn"), DataConfig(image_size=(64, 32)), 3)
    b = build_model({"backbone": "tiny-rn"}, {"image_size": [64, 32]}, 3)
    assert isinstance(a, HandCLIP) and a.feature_dim == b.feature_dim
    assert a.spec["image_size"] == [64, 32]
    with pytest.raises(ConfigError, match="at least one training identity"):
        build_model({"backbone": "tiny-rn"}, {"image_size": [64, 64]}, 0)


def test_build_model_names_bad_keys():
    with pytest.raises(ConfigError, match=r"model\.neck_feat"):
        build_model({"backbone": "tiny-rn", "neck_feat": "middle"}, {"image_size": [64, 64]}, 3)
    with pytest.raises(ConfigError, match=r"model\.colour: unknown key"):
        build_model({"backbone": "tiny-rn", "colour": 1}, {"image_size": [64, 64]}, 3)
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet9000'"):
        build_model({"backbone": "resnet9000"}, {"image_size": [64, 64]}, 3)
