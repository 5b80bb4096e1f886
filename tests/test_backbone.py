"""Backbones: OpenAI-format weights, safe loading, unknown names, input geometry."""

import copy
import warnings

import open_clip
import pytest
import torch
from torch import nn

from handclip.errors import CheckpointError, ConfigError
from handclip.model import backbone, weights
from handclip.model.backbone import TinyConvNet, create_clip, get_tokenizer, rn_feature_map_size
from handclip.model.handclip import build_model

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation notices

_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}
# Reduced OpenAI-style configs: head width 64 everywhere, as open_clip's OpenAI loader infers.
OPENAI_STYLE = {
    "vit": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16},
        "text_cfg": _TEXT,
    },
    "rn": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 32, "patch_size": None},
        "text_cfg": _TEXT,
    },
}
TEMPLATE = "A photo of a X X X X hand."


@pytest.fixture
def openai_style_model(monkeypatch, request):
    """Register a reduced OpenAI-style config under an open_clip name and return (name, random CLIP)."""
    kind = request.param
    name = f"test-openai-{kind}-quickgelu"
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, copy.deepcopy(OPENAI_STYLE[kind]))
    torch.manual_seed(0)
    model = open_clip.CLIP(**copy.deepcopy(OPENAI_STYLE[kind])).eval()
    with torch.no_grad():  # make every weight matter (ModifiedResNet zero-inits bn3)
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn_like(tensor))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5)
    return name, model


def openai_state_dict(model: nn.Module) -> dict:
    """The model's weights as OpenAI ships them: same keys, most weights in float16, metadata entries."""
    lp = copy.deepcopy(model)
    open_clip.model.convert_weights_to_lp(lp, dtype=torch.float16)
    state = {k: v.clone() for k, v in lp.state_dict().items()}
    state["input_resolution"] = torch.tensor(64)
    state["context_length"] = torch.tensor(77)
    state["vocab_size"] = torch.tensor(49408)
    return state


def write_torchscript(state: dict, path) -> None:
    """A TorchScript archive whose state_dict() has exactly the given (OpenAI) keys."""
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))


def _compare_with_open_clip(name, weights_path, model_kwargs):
    # open_clip's own ResNet keeps stride 2 in layer4; compare like with like.
    model_kwargs = {"rn_last_stride": 2, **model_kwargs}
    reference = open_clip.load_openai_model(str(weights_path), precision="fp32", device="cpu").eval()
    model = build_model(
        {"backbone": name, "weights": str(weights_path), **model_kwargs}, {"image_size": [64, 64]}, num_ids=3
    ).eval()
    images = torch.randn(2, 3, 64, 64)
    tokens = open_clip.get_tokenizer(name)([TEMPLATE])
    x_positions = (tokens[0] == open_clip.get_tokenizer(name)(["X"])[0, 1]).nonzero().flatten()
    with torch.no_grad():
        # Give identity 1 the embeddings of the template's own "X" tokens: its prompt is then the plain text.
        model.prompt_learner.ctx[1] = reference.token_embedding(tokens)[0, x_positions]
        ours = model(images)
        ours_text = model.text_features(torch.tensor([1]))
        theirs = reference.encode_image(images)
        theirs_text = reference.encode_text(tokens)
    torch.testing.assert_close(ours.image_proj, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_text, theirs_text, atol=1e-5, rtol=1e-5)
    assert ours.image_proj.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("openai_style_model", ["vit", "rn"], indirect=True)
def test_openai_state_dict_file_matches_open_clip_features(openai_style_model, tmp_path):
    name, model = openai_style_model
    path = tmp_path / "openai_layout.pt"
    torch.save(openai_state_dict(model), path)
    _compare_with_open_clip(name, path, {})


@pytest.mark.parametrize("openai_style_model", ["vit", "rn"], indirect=True)
def test_openai_torchscript_file_matches_open_clip_features(openai_style_model, tmp_path, monkeypatch):
    name, model = openai_style_model
    path = tmp_path / "ViT-test.pt"
    write_torchscript(openai_state_dict(model), path)
    # Unknown hash: refused without the explicit flag ...
    with pytest.raises(CheckpointError, match="TorchScript.*allow_unsafe_weights"):
        create_clip(name, weights=str(path), image_size=(64, 64))
    # ... accepted with it ...
    _compare_with_open_clip(name, path, {"allow_unsafe_weights": True})
    # ... and accepted without it once the file's hash is a known official one.
    monkeypatch.setitem(weights.KNOWN_OPENAI_SHA256, weights.sha256_file(path), "test.pt")
    _compare_with_open_clip(name, path, {})


def test_known_openai_hashes_are_the_published_ones():
    # OpenAI publishes each file under a URL that contains its SHA-256; open_clip lists those URLs.
    from open_clip.pretrained import get_pretrained_url

    for model_name in ("RN50", "ViT-B-32", "ViT-B-16"):
        url = get_pretrained_url(model_name, "openai")
        assert url.split("/")[-2] in weights.KNOWN_OPENAI_SHA256


def test_unknown_backbone_names_valid_ones():
    with pytest.raises(ConfigError, match="unknown backbone 'ViT-B-61'.*ViT-B-16"):
        create_clip("ViT-B-61")


def test_unsupported_open_clip_model_is_refused_clearly():
    with pytest.raises(ConfigError, match="not supported"):
        create_clip("ViT-B-16-SigLIP")


def test_weights_of_another_architecture_are_refused_naming_file_and_keys(tmp_path):
    path = tmp_path / "rn.pt"
    torch.save(create_clip("tiny-rn", image_size=(64, 64)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"rn\.pt does not match backbone 'tiny-vit'.*missing keys.*visual\."):
        create_clip("tiny-vit", weights=str(path), image_size=(64, 64))


def test_weights_with_wrong_shapes_are_refused(tmp_path):
    config = copy.deepcopy(backbone.TINY_CONFIGS["tiny-vit"])
    config["vision_cfg"]["patch_size"] = 16  # same keys, other shapes
    path = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in open_clip.CLIP(**config).state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"other\.safetensors.*shape mismatches.*visual\.conv1\.weight"):
        create_clip("tiny-vit", weights=str(path), image_size=(64, 64))


def test_plain_state_dict_and_safetensors_load_exactly(tmp_path):
    source = create_clip("tiny-vit", image_size=(64, 64))
    from safetensors.torch import save_file

    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pt")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for name in ("ddp.pt", "w.safetensors"):
        loaded = create_clip("tiny-vit", weights=str(tmp_path / name), image_size=(64, 64))
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_pretrained_tag_needs_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="would need a download"):
        create_clip("ViT-B-32", weights="openai")
    with pytest.raises(CheckpointError, match="neither an existing file nor a pretrained tag"):
        create_clip("ViT-B-32", weights="no_such_tag")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_clip("tiny-vit", weights=str(tmp_path / "absent.pt"))


# ---------------------------------------------------------------------------- geometry


def test_non_square_input_resizes_grid_and_keeps_class_token():
    square = create_clip("tiny-vit", image_size=(64, 64))
    torch.manual_seed(1)
    tall = create_clip("tiny-vit", image_size=(96, 48))
    assert tall.visual.grid_size == (12, 6)
    assert tall.visual.positional_embedding.shape == (12 * 6 + 1, 192)
    assert tall.encode_image(torch.randn(2, 3, 96, 48)).shape == (2, 128)

    # Resizing an embedding that is constant over the grid keeps it constant; the CLS entry is untouched.
    pos = torch.randn(8 * 8 + 1, 4)
    pos[1:] = pos[1]
    resized = backbone._resize_grid(pos, (8, 8), (12, 6))
    assert torch.equal(resized[0], pos[0])
    torch.testing.assert_close(resized[1:], pos[1].expand(72, 4), atol=1e-5, rtol=1e-5)
    # Bicubic resize follows a smooth ramp: the first row of the grid stays the lowest.
    ramp = torch.cat([torch.zeros(1, 1), torch.arange(8.0).repeat_interleave(8).unsqueeze(1)])
    resized = backbone._resize_grid(ramp, (8, 8), (12, 6))[1:].reshape(12, 6)
    assert torch.all(resized[1:] >= resized[:-1] - 1e-5) and resized[-1, 0] > resized[0, 0] + 5
    # The native size leaves the embedding bit-identical.
    assert square.visual.positional_embedding.shape == (65, 192)


def test_patch_stride_gives_overlapping_patches():
    clip = create_clip("tiny-vit", image_size=(64, 32), patch_stride=4)
    assert clip.visual.conv1.stride == (4, 4)
    assert clip.visual.grid_size == ((64 - 8) // 4 + 1, (32 - 8) // 4 + 1)
    model = build_model({"backbone": "tiny-vit", "patch_stride": 4}, {"image_size": [64, 32]}, num_ids=5).eval()
    with torch.no_grad():
        assert model.extract(torch.randn(2, 3, 64, 32)).shape == (2, model.feature_dim)
    with pytest.raises(ConfigError, match="patch_stride"):
        create_clip("tiny-rn", image_size=(64, 64), patch_stride=4)


def _layer4_map(clip, size):
    seen = {}

    def record(module, inputs, output):
        seen["shape"] = tuple(output.shape[2:])

    clip.eval()
    clip.visual.layer4.register_forward_hook(record)
    with torch.no_grad():
        out = clip.encode_image(torch.randn(1, 3, *size))
    return seen["shape"], out


def test_rn_last_stride_one_doubles_layer4_map():
    stride2 = create_clip("tiny-rn", image_size=(128, 64), rn_last_stride=2)
    stride1 = create_clip("tiny-rn", image_size=(128, 64), rn_last_stride=1)
    shape2, _ = _layer4_map(stride2, (128, 64))
    shape1, out = _layer4_map(stride1, (128, 64))
    assert shape2 == (4, 2) and shape1 == (8, 4)
    assert stride1.visual.attnpool.positional_embedding.shape[0] == 8 * 4 + 1
    assert out.shape == (1, 128)
    assert isinstance(stride1.visual.layer4[0].downsample[0], nn.Identity)


@pytest.mark.parametrize("size", [(64, 64), (100, 70), (224, 112), (33, 47)])
@pytest.mark.parametrize("last_stride", [1, 2])
def test_rn_feature_map_size_matches_the_network(size, last_stride):
    clip = create_clip("tiny-rn", image_size=size, rn_last_stride=last_stride)
    shape, _ = _layer4_map(clip, size)
    assert shape == rn_feature_map_size(size, last_stride)


@pytest.mark.parametrize("size", [(64, 64), (100, 70), (33, 47)])
@pytest.mark.parametrize("last_stride", [1, 2])
def test_tiny_cnn_geometry_matches_the_network(size, last_stride):
    clip = create_clip("tiny-cnn", image_size=size, rn_last_stride=last_stride)
    visual = clip.visual
    assert isinstance(visual, TinyConvNet)
    shape, out = _layer4_map(clip, size)
    assert shape == visual.map_size_for(size, last_stride) == visual.feature_map_size
    assert visual.attnpool.positional_embedding.shape[0] == shape[0] * shape[1] + 1
    assert out.shape == (1, 128)
    # CLIP's text side is the tiny config's own, untouched by the image tower swap.
    tokens = get_tokenizer("tiny-cnn")(["a photo of a hand."])
    assert clip.encode_text(tokens).shape == (1, 128)


def test_full_size_backbones_get_clip_reid_geometry():
    # CLIP-ReID's ViT-B/16 setting: 256x128 input, overlapping patches with stride 12 -> 21x10 grid.
    vit = create_clip("ViT-B/16", image_size=(256, 128), patch_stride=12)
    assert vit.visual.grid_size == (21, 10)
    assert vit.visual.positional_embedding.shape == (21 * 10 + 1, 768)
    # RN50 with last stride 1 at 224x224: a 14x14 layer4 map, attention pool resized to match.
    rn50 = create_clip("RN50", image_size=(224, 224), rn_last_stride=1)
    assert rn_feature_map_size((224, 224), 1) == (14, 14)
    assert rn50.visual.attnpool.positional_embedding.shape == (14 * 14 + 1, 2048)
