"""Configuration of image-conditioned prompts (the ``model`` keys) and of CLIP-HandID's single-stage recipe
(the ``single_stage`` section); docs/method.md, "Image-conditioned prompts", and docs/image-prompts.md.

``model.prompt`` chooses the text side: ``identity`` (CLIP-ReID's learnt context per identity, the default),
``image`` (an inversion network turns each image's projected feature into pseudo-word(s) placed in
``model.image_prompt_template``) or ``both`` (the identity's context and the image's pseudo-word(s) in one
template). The single-stage recipe's defaults are CLIP-HandID's released ``train_handID.py``.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from .config_base import MAX_BATCH, MAX_EPOCHS, MAX_LR, Section

PLACEHOLDER = "*"  # a pseudo-word's position in model.image_prompt_template
MAX_INVERSION_TOKENS = 16


def count_words(template: str, word: str) -> int:
    """How many times ``word`` stands alone in ``template`` (trailing punctuation ignored)."""
    return sum(part.strip(".,;:!?") == word for part in template.split())


def image_prompt_template(prompt: str, n_ctx: int, inversion_tokens: int, template: Optional[str]) -> str:
    """The template image prompts use: ``template`` when given, else "A photo of a * hand." with one ``*``
    per pseudo-word, the identity's ``n_ctx`` X's before them for ``both``."""
    if template is not None:
        return template
    context = "X " * n_ctx if prompt == "both" else ""
    return f"A photo of a {context}{' '.join([PLACEHOLDER] * inversion_tokens)} hand."


class ImagePromptSettings(Section):
    """The ``model`` keys of image-conditioned prompts (mixed into ``ModelConfig``)."""

    prompt: Literal["identity", "image", "both"] = Field(
        "identity", description="text side: identity (CLIP-ReID's prompts), image (textual inversion, CLIP-HandID) "
                                "or both (identity context and image pseudo-words in one prompt, PromptSG)")
    inversion: Literal["mlp", "transformer"] = Field(
        "mlp", description="inversion network: CLIP-HandID's MLP on the projected feature, or a small transformer "
                           "whose queries read the projected image tokens")
    inversion_tokens: int = Field(1, ge=1, le=MAX_INVERSION_TOKENS, description="pseudo-words per image")
    image_prompt_template: Optional[str] = Field(
        None, description="template with one '*' per pseudo-word (and n_ctx X's for prompt: both); None: "
                          "'A photo of a * hand.' ('A photo of a X X X X * hand.' for both)")
    inversion_grad: bool = Field(
        True, description="gradients reach the inversion network; false runs the text path under no_grad, as "
                          "CLIP-HandID's released code (the inversion network then keeps its initial weights)")
    inversion_dropout: float = Field(0.5, ge=0, lt=1, description="dropout inside the MLP (CLIP-HandID: 0.5)")
    inversion_channel_mean: bool = Field(
        False, description="replace the pseudo-word by the mean of its entries, as CLIP-HandID's released code "
                           "does for its one MLP token (the prompt is then nearly the same for every image)")
    interaction: bool = Field(
        False, description="CLIP-HandID's interaction network: the pseudo-prompt's text feature attends over the "
                           "image's projected tokens; its feature gets a BNNeck, a classifier and a place in the "
                           "test feature")


def check_image_prompts(model) -> None:
    """Raise ValueError (one line naming the key) when the image-prompt keys of ``model`` contradict each other."""
    if model.prompt == "identity":
        if model.interaction:
            raise ValueError("model.interaction needs image prompts (model.prompt: image)")
        return
    template = image_prompt_template(model.prompt, model.n_ctx, model.inversion_tokens, model.image_prompt_template)
    stars, xs = count_words(template, PLACEHOLDER), count_words(template, "X")
    if stars != model.inversion_tokens:
        raise ValueError(f"model.image_prompt_template '{template}' has {stars} '*' placeholders but "
                         f"model.inversion_tokens is {model.inversion_tokens}")
    if model.prompt == "both" and xs != model.n_ctx:
        raise ValueError(f"model.image_prompt_template '{template}' has {xs} 'X' placeholders but model.prompt "
                         f"'both' needs model.n_ctx={model.n_ctx} of them")
    if model.prompt == "image" and xs:
        raise ValueError(f"model.image_prompt_template '{template}' has 'X' placeholders; identity context in "
                         f"an image prompt is model.prompt: both")
    if model.interaction and model.prompt != "image":
        # A test image has no identity, so a prompt holding an identity's context cannot be built for it.
        raise ValueError("model.interaction needs model.prompt: image (a test image has no identity to put in "
                         "the prompt of model.prompt: both)")
    if model.interaction and model.id_head == "text":
        raise ValueError("model.interaction needs a classifier head (model.id_head linear or arcface)")
    if model.inversion_channel_mean and (model.inversion != "mlp" or model.inversion_tokens != 1):
        raise ValueError("model.inversion_channel_mean reproduces CLIP-HandID's one MLP token: it needs "
                         "model.inversion: mlp and model.inversion_tokens: 1")


class SingleStageConfig(Section):
    """CLIP-HandID's one-stage recipe (``train.single_stage``); the defaults are its ``train_handID.py``."""

    enabled: bool = Field(False, description="train with this recipe instead of stage 1 and stage 2")
    epochs: int = Field(70, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(20, ge=2, le=MAX_BATCH, description="random training images per batch (no P x K); "
                                                                "a shorter last batch is skipped")
    lr: float = Field(5e-6, gt=0, le=MAX_LR, description="lr of the image encoder")
    new_lr_factor: float = Field(10.0, gt=0, le=1000, description="lr of every other trainable part (heads, "
                                                                  "inversion, interaction, prompts) = lr x this")
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(10, ge=0, le=MAX_EPOCHS)
    warmup_factor: float = Field(0.01, gt=0, le=1)
    milestones: list[int] = [40, 60]
    gamma: float = Field(0.5, gt=0)
    schedule_epochs_from: Literal[0, 1] = Field(
        0, description="0: epoch e (0-based) trains at the schedule's value for e, as CLIP-HandID's update(epoch)")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    id_weight: float = Field(1.0, ge=0, description="label-smoothed cross-entropy, summed over the ID heads")
    text_weight: float = Field(1.0, ge=0, description="SupCon image->text + text->image between each image and "
                                                      "its own prompt's text feature")
    triplet_weight: float = Field(0.0, ge=0, description="batch-hard triplet (CLIP-HandID: none)")
    triplet_margin: float = Field(0.3, ge=0)
    triplet_features: list[Literal["mid", "last", "proj"]] = ["last", "proj"]
    select: Literal["accuracy", "rank1"] = Field(
        "accuracy", description="best.pt by validation classification accuracy of the projected feature's head "
                                "(CLIP-HandID) or by validation rank-1, then mAP (HandCLIP's stages)")
    eval_every: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"single_stage.milestones {self.milestones} must be increasing")
        if self.triplet_weight > 0 and not self.triplet_features:
            raise ValueError("single_stage.triplet_features is empty but single_stage.triplet_weight is above 0")
        return self
