"""Stage 2, a recipe on ``train.loop``: fine-tune the image encoder against fixed text anchors (docs/method.md,
"Stage 2"), and the joint run.

``Stage2Trainer`` sets up the trainable parts, the losses, the optimizers and the text anchors, and
defines one step (``compute_losses`` then ``update``); its ``run`` is the recipe's loop.

Trainable: the image encoder (or its last ``model.unfreeze_last_n`` blocks) and every new head (BNNeck,
ID classifiers, ArcFace), plus center-loss centres when that loss is on. The prompts and the text
encoder stay frozen unless ``stage2.freeze_prompt`` is False (then the prompt vectors train too, and
text features are recomputed every batch so the gradient reaches them; the text encoder itself is
never trained, as in CLIP-ReID).

Losses (each weighted by its ``stage2.*_weight``): identity cross-entropy with label smoothing on both
BNNeck heads (or on ``image_proj @ text.T`` with ``model.id_head == 'text'``), batch-hard triplet summed
over ``stage2.triplet_features`` (default CLIP-ReID's three: ``feat_mid``, ``feat_last``, ``feat_proj``),
image->text cross-entropy over all identities' text features (raw dot products unless
``losses.logits: cosine``),
optional supervised contrastive i2t + t2i, optional center loss on the test feature
(``[feat_last, feat_proj]``), and the prompt L2 penalty when the prompts train. With ``model.prompt`` image
or both, each image's own prompt (``out.prompt_text``) adds SupCon image->text + text->image
(``stage2.image_prompt_weight``); the interaction head, when on, is a third ID head.

Joint run (``runtime.joint``): one run of ``stage2.epochs`` epochs in which the prompts and the image
encoder train together. The prompts get their own Adam group (``stage1.lr``/``stage1.weight_decay``),
every lr follows stage 2's warm-up multi-step schedule, text features are recomputed every batch with
gradient, and the stage-1 loss (SupCon i2t + t2i on the batch, weight 1) is added to the stage-2 losses.
"""

from __future__ import annotations

import inspect

import torch

from ..aspects import aspect_index, record_aspect
from ..errors import TrainingError
from ..runtime import autocast, make_grad_scaler, resolve_amp_dtype, use_channels_last
from .hooks import LrSchedule, TrainingState, training_hooks
from .loop import TrainLoop
from .losses import (
    CenterLoss,
    CrossEntropyLabelSmooth,
    SupConLoss,
    TripletLoss,
    i2t_cross_entropy,
    image_text_scale,
    prompt_l2,
    text_id_logits,
)
from .optim import build_stage2_optimizer


def configure_stage2_trainable(model, model_cfg, stage2_cfg, joint: bool) -> None:
    """Image encoder (all, or its last N blocks + output layers) and heads train; text encoder frozen;
    prompts train only in a joint run or with ``stage2.freeze_prompt: false``."""
    for param in model.parameters():
        param.requires_grad_(False)
    model.set_stage2_trainable(freeze_prompt=not (joint or not stage2_cfg.freeze_prompt),
                               unfreeze_last_n=model_cfg.unfreeze_last_n)
    if model_cfg.id_head == "text":
        # No loss reads the BNNeck outputs then (ID logits come from image_proj @ text.T): keep its
        # affine weights out of the optimizer rather than "train" them with a zero gradient.
        for module in (model.bottleneck, model.bottleneck_proj):
            for param in module.parameters():
                param.requires_grad_(False)


class Stage2Trainer:
    """Holds the stage-2 (or joint) losses, optimizers and text anchors; ``compute_losses`` is one batch's
    loss terms, ``update`` the step on them, ``run`` the training."""

    def __init__(self, ctx, joint: bool = False):
        self.ctx = ctx
        self.cfg = ctx.config
        self.joint = joint
        s2 = self.cfg.stage2
        self.s2 = s2
        model = ctx.model
        self.model = model
        device = ctx.device
        self.device = device
        configure_stage2_trainable(model, self.cfg.model, s2, joint)
        self.prompt_trains = joint or not s2.freeze_prompt
        self.scale = image_text_scale(model, self.cfg)
        self.id_loss = CrossEntropyLabelSmooth(s2.label_smoothing)
        self.triplet = TripletLoss(s2.triplet_margin)
        self.supcon = SupConLoss()
        self.center = None
        if s2.center_weight > 0:
            self.center = CenterLoss(model.num_ids, model.feature_dim).to(device)
        self.optimizers, self.schedule = build_stage2_optimizer(
            model, s2, self.cfg.runtime, device, center_loss=self.center,
            prompt_lr=self.cfg.stage1.lr if joint else None,
            prompt_weight_decay=self.cfg.stage1.weight_decay if joint else 0.0)
        self.dtype = resolve_amp_dtype(device, self.cfg.runtime.amp)
        self.scaler = make_grad_scaler(device, self.dtype)
        self.channels_last = use_channels_last(self.cfg.runtime, device, model)
        if self.channels_last:
            model.image_encoder.to(memory_format=torch.channels_last)
        self.text_per_batch = self.prompt_trains or s2.text_features == "per_batch"
        self.needs_text = (s2.i2t_weight > 0 or s2.supcon_weight > 0 or self.cfg.model.id_head == "text" or joint)
        self.fixed_text = None
        if self.needs_text and not self.text_per_batch:
            self.fixed_text = self._all_text_features(grad=False)
        self.forward_model = ctx.wrap_for_training(model)
        if self.cfg.runtime.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.forward_takes_labels = "labels" in inspect.signature(model.forward).parameters
        # Each training image's aspect index, for the aspect embeddings and the aspect head (by dataset index).
        self.reads_aspects = getattr(model, "aspect_embedding", None) is not None
        self.aspect_head = getattr(model, "aspect_head", None) is not None
        self.train_aspects = None
        if self.reads_aspects or self.aspect_head:
            self.train_aspects = torch.tensor([aspect_index(record_aspect(r)) for r in ctx.train_records])

    def _all_text_features(self, grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad), autocast(self.device, self.dtype):
            return self.model.all_text_features().float()

    def text_features(self) -> torch.Tensor | None:
        if not self.needs_text:
            return None
        if self.fixed_text is not None:
            return self.fixed_text
        return self._all_text_features(grad=self.prompt_trains)

    def compute_losses(self, images: torch.Tensor, labels: torch.Tensor,
                       aspects: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch (already on the device); ``aspects``: the images' aspect
        indices, for the aspect embeddings (model.sie: aspect) and the aspect head."""
        s2 = self.s2
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            if self.reads_aspects or self.aspect_head:
                out = self.forward_model(images, labels, aspects=aspects if self.reads_aspects else None)
            elif self.forward_takes_labels:
                out = self.forward_model(images, labels)
            else:
                out = self.forward_model(images)
        text = self.text_features()
        terms: dict[str, torch.Tensor] = {}
        if s2.id_weight > 0:
            if self.cfg.model.id_head == "text":
                terms["id"] = s2.id_weight * self.id_loss(text_id_logits(out.image_proj, text, self.scale), labels)
            else:
                terms["id"] = s2.id_weight * sum(self.id_loss(logits, labels) for logits in out.logits)
        if s2.triplet_weight > 0:
            features = {"mid": out.feat_mid, "last": out.feat_last, "proj": out.feat_proj}
            total = None
            for name in s2.triplet_features:
                loss = self.triplet(features[name], labels)
                total = loss if total is None else total + loss
            terms["triplet"] = s2.triplet_weight * total
        if s2.i2t_weight > 0:
            terms["i2t"] = s2.i2t_weight * i2t_cross_entropy(out.image_proj, text, labels, self.scale,
                                                             s2.label_smoothing)
        if s2.supcon_weight > 0 or self.joint:
            batch_text = text[labels]
            pair = (self.supcon(out.image_proj, batch_text, labels, labels, self.scale)
                    + self.supcon(batch_text, out.image_proj, labels, labels, self.scale))
            if s2.supcon_weight > 0:
                terms["supcon"] = s2.supcon_weight * pair
            if self.joint:
                terms["stage1_supcon"] = pair
        if out.prompt_text is not None and s2.image_prompt_weight > 0:
            terms["image_prompt"] = s2.image_prompt_weight * self.supcon_pair(out.image_proj, out.prompt_text, labels)
        if self.center is not None:
            features = torch.cat([out.feat_last.float(), out.feat_proj.float()], dim=1)
            terms["center"] = s2.center_weight * self.center(features, labels)
        if out.aspect_logits is not None and aspects is not None:
            # The head reads the images on its own: this term trains only the head.
            terms["aspect"] = torch.nn.functional.cross_entropy(out.aspect_logits.float(), aspects)
        if self.prompt_trains:
            weight = self.cfg.stage1.prompt_l2 if self.joint else s2.prompt_l2
            if weight > 0:
                terms["prompt_l2"] = weight * prompt_l2(self.model.prompt_learner.ctx)
        return terms

    def supcon_pair(self, image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SupCon image->text + text->image, positives the same identity (docs/method.md, "Stage 1")."""
        return (self.supcon(image, text, labels, labels, self.scale)
                + self.supcon(text, image, labels, labels, self.scale))

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch already on the device (what the stage-2 loop does per batch
        between its hooks, and what benchmarks/bench_stage2.py times); returns the loss terms."""
        terms = self.compute_losses(images, labels)
        self.update(terms)
        return terms

    def update(self, terms: dict[str, torch.Tensor]) -> None:
        """Backward pass and optimizer step on the sum of ``terms``. No host sync on CUDA."""
        loss = sum(terms.values())
        self.optimizers.zero_grad()
        self.backward_and_step(loss)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        opts = self.optimizers
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        self.ctx.reduce_extra_gradients(self)
        if self.center is not None and self.s2.center_weight > 0:
            # As in CLIP-ReID: the centres move with center_lr whatever the loss weight.
            for param in self.center.parameters():
                if param.grad is not None:
                    param.grad.mul_(1.0 / self.s2.center_weight)
        if self.s2.grad_clip is not None:
            if self.scaler is not None:
                opts.unscale_(self.scaler)
            params = [p for g in opts.main.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.s2.grad_clip)
        opts.step(self.scaler)
        if self.scaler is not None:
            self.scaler.update()

    def training_state(self) -> TrainingState:
        """What a resume restores: the optimizers, the schedule, the grad scaler and the centres."""
        return TrainingState(optimizer=self.optimizers, schedule=self.schedule, scaler=self.scaler,
                             center=self.center)

    def run(self, resume: dict | None = None) -> None:
        """The stage-2 (or joint) recipe: ``stage2.epochs`` epochs over the P x K loader."""
        ctx, s2, device = self.ctx, self.s2, self.device
        loader = ctx.build_train_loader()
        # The sampler's count for its first epoch (a sampler may give another count in a later epoch; the
        # schedule positions and the epoch's mean losses use this one).
        steps = len(loader)
        if steps == 0:
            raise TrainingError("stage2: the P x K sampler produced no batch; lower stage2.ids_per_batch")

        def epoch_batches(epoch: int):
            loader.batch_sampler.set_epoch(epoch)
            return loader

        def losses(batch) -> dict[str, torch.Tensor]:
            images = batch[0].to(device, non_blocking=True)
            labels = batch[1].to(device, non_blocking=True)
            if self.train_aspects is None:
                return self.compute_losses(images, labels)
            return self.compute_losses(images, labels, self.train_aspects[batch[2]].to(device, non_blocking=True))

        hooks = training_hooks(ctx, self.training_state(), resume,
                               schedule=LrSchedule(self.schedule, s2.schedule, s2.schedule_epochs_from),
                               lr=lambda: self.optimizers.main.param_groups[0]["lr"],
                               validate_every=s2.eval_every, count_images=lambda batch: len(batch[1]))
        stage = "joint" if self.joint else "stage2"
        TrainLoop(stage, s2.epochs, steps, self.model, hooks).run(epoch_batches, losses, self.update)


def run_stage2(ctx, resume: dict | None = None, joint: bool = False) -> None:
    """Stage 2 (or, with ``joint``, the joint run): set up the trainable parts, losses and optimizers, then train."""
    Stage2Trainer(ctx, joint=joint).run(resume)
