"""CLIP-HandID's single-stage recipe on ``train.loop`` (docs/method.md, "Single-stage recipe (CLIP-HandID)";
``configs/clip_handid_vitb16.yaml`` writes it out; docs/image-prompts.md lists each difference from its code).

One stage of ``single_stage.epochs`` epochs over random batches of ``single_stage.batch_size`` training
images (no P x K; a shorter last batch is skipped).

- Trainable: the image encoder and every new part: BNNeck and ID heads, the interaction network, the
  inversion network (unless ``model.inversion_grad`` is false, when it keeps its initial weights as in
  CLIP-HandID's code), and the identity prompts when ``model.prompt`` is identity or both. The text
  encoder is frozen.
- Optimiser: Adam, weight decay ``single_stage.weight_decay``; lr ``single_stage.lr`` for the image encoder
  and ``new_lr_factor`` x that for every other trainable part.
- Schedule: linear warm-up from ``warmup_factor`` over ``warmup_epochs``, x ``gamma`` at each milestone,
  set at the start of each epoch (epochs numbered from ``schedule_epochs_from``).
- Losses: label-smoothed identity cross-entropy summed over the ID heads (two; three with the interaction
  network); SupCon image->text + text->image between each image's projected feature and its own prompt's
  text feature; optionally batch-hard triplet.
- Model selection: validation classification accuracy of the projected feature's head (``select:
  accuracy``, CLIP-HandID's) or validation rank-1 then mAP (``select: rank1``); retrieval on the
  validation split is logged either way.
"""

from __future__ import annotations

import torch

from ..data.loaders import build_eval_loader, build_random_loader
from ..errors import ConfigError, TrainingError
from ..runtime import autocast, make_grad_scaler, resolve_amp_dtype
from . import distributed as ddp
from .hooks import LrSchedule, TrainingState, Validation, training_hooks
from .loop import TrainLoop
from .losses import CrossEntropyLabelSmooth, SupConLoss, TripletLoss, image_text_scale
from .optim import WarmupMultiStepLR, adam


def configure_trainable(model, model_cfg) -> None:
    """Image encoder, heads, interaction and (with gradients) inversion train; identity prompts train when the
    text side uses them; the text encoder never does."""
    if model_cfg.id_head == "text":
        raise ConfigError("single_stage needs ID classifier heads: model.id_head linear or arcface, not text")
    for param in model.parameters():
        param.requires_grad_(False)
    model.set_stage2_trainable(freeze_prompt=model_cfg.prompt == "image", unfreeze_last_n=model_cfg.unfreeze_last_n)


def param_groups(model, cfg) -> list[dict]:
    """Two Adam groups: the image encoder at ``lr``, every other trainable part at ``lr x new_lr_factor``."""
    encoder, new = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (encoder if name.startswith("image_encoder.") else new).append(param)
    return [{"params": encoder, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "image_encoder"},
            {"params": new, "lr": cfg.lr * cfg.new_lr_factor, "weight_decay": cfg.weight_decay, "name": "new"}]


@torch.no_grad()
def validation_accuracy(model, records, label_map, data_cfg, batch_size: int, device) -> float:
    """Share of the validation images whose projected feature's ID head (after its BNNeck, eval mode) names
    their identity: CLIP-HandID's model-selection score."""
    model.eval()
    correct = 0
    for images, _, index in build_eval_loader(data_cfg, list(records), batch_size):
        _, _, feat_proj = model.image_features(images.to(device))
        predicted = model.classifier_proj(model.bottleneck_proj(feat_proj)).argmax(dim=1).cpu()
        truth = torch.tensor([label_map[records[int(i)].pid] for i in index])
        correct += int((predicted == truth).sum())
    return correct / max(len(records), 1)


class SingleStageTrainer:
    """The recipe's parts (trainable set, optimiser, schedule, losses) and one step: ``compute_losses`` then
    ``update``; ``run`` is the loop."""

    def __init__(self, ctx):
        self.ctx, self.cfg, self.model, self.device = ctx, ctx.config.single_stage, ctx.model, ctx.device
        model_cfg = ctx.config.model
        configure_trainable(self.model, model_cfg)
        self.prompt_trains = model_cfg.prompt != "image"  # read by ctx.reduce_extra_gradients under DDP
        self.optimizer = adam(param_groups(self.model, self.cfg), ctx.config.runtime, self.device)
        self.schedule = WarmupMultiStepLR(self.optimizer, self.cfg.milestones, self.cfg.gamma,
                                          self.cfg.warmup_factor, self.cfg.warmup_epochs)
        self.id_loss = CrossEntropyLabelSmooth(self.cfg.label_smoothing)
        self.supcon = SupConLoss()
        self.triplet = TripletLoss(self.cfg.triplet_margin)
        self.scale = image_text_scale(self.model, ctx.config)
        self.dtype = resolve_amp_dtype(self.device, ctx.config.runtime.amp)
        self.scaler = make_grad_scaler(self.device, self.dtype)
        self.forward_model = ctx.wrap_for_training(self.model)

    def prompt_text(self, out, labels: torch.Tensor) -> torch.Tensor:
        """Each image's own prompt's text feature: its image prompt, or (``model.prompt: identity``) its
        identity's prompt, encoded once per identity in the batch."""
        if out.prompt_text is not None:
            return out.prompt_text
        unique, inverse = torch.unique(labels, return_inverse=True)
        return self.model.text_features(unique)[inverse]

    def compute_losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        with autocast(self.device, self.dtype):
            out = self.forward_model(images, labels)
            text = self.prompt_text(out, labels) if cfg.text_weight > 0 else None
        terms: dict[str, torch.Tensor] = {}
        if cfg.id_weight > 0:
            terms["id"] = cfg.id_weight * sum(self.id_loss(logits, labels) for logits in out.logits)
        if text is not None:
            terms["text"] = cfg.text_weight * (self.supcon(out.image_proj, text, labels, labels, self.scale)
                                               + self.supcon(text, out.image_proj, labels, labels, self.scale))
        if cfg.triplet_weight > 0:
            features = {"mid": out.feat_mid, "last": out.feat_last, "proj": out.feat_proj}
            terms["triplet"] = cfg.triplet_weight * sum(self.triplet(features[n], labels) for n in cfg.triplet_features)
        return terms

    def update(self, terms: dict[str, torch.Tensor]) -> None:
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        self.ctx.reduce_extra_gradients(self)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def validate(self) -> dict:
        """Retrieval on the validation split (``ctx.validate``) plus CLIP-HandID's classification accuracy."""
        ctx = self.ctx
        metrics = ctx.validate()
        accuracy = None
        if ctx.is_main:
            with torch.random.fork_rng(devices=[]):  # how often one validates must not change training
                accuracy = validation_accuracy(self.model, ctx.manifest.split("val"), ctx.label_map,
                                               ctx.config.data, ctx.config.eval.batch_size, self.device)
        return {**metrics, "accuracy": ddp.broadcast_object(accuracy, ctx.dist)}

    def run(self, resume: dict | None = None) -> None:
        ctx, cfg, device = self.ctx, self.cfg, self.device
        loader = build_random_loader(ctx.config.data, ctx.train_records, ctx.label_map, cfg.batch_size,
                                     seed=ctx.config.seed, rank=ctx.dist.rank, world_size=ctx.world_size)
        if len(loader) == 0:
            raise TrainingError(f"single_stage: batch_size {cfg.batch_size} is more than the "
                                f"{len(ctx.train_records)} training images; lower single_stage.batch_size")

        def epoch_batches(epoch: int):
            loader.sampler.set_epoch(epoch)
            return loader

        def losses(batch) -> dict[str, torch.Tensor]:
            return self.compute_losses(batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True))

        select = ("accuracy", "rank1", "mAP") if cfg.select == "accuracy" else ("rank1", "mAP")
        hooks = training_hooks(ctx, TrainingState(optimizer=self.optimizer, schedule=self.schedule, scaler=self.scaler),
                               resume, schedule=LrSchedule(self.schedule, "epoch", cfg.schedule_epochs_from),
                               lr=lambda: self.optimizer.param_groups[0]["lr"], validate_every=cfg.eval_every,
                               count_images=lambda batch: len(batch[1]),
                               validation=Validation(ctx, cfg.eval_every, select, self.validate))
        TrainLoop("single_stage", cfg.epochs, len(loader), self.model, hooks).run(epoch_batches, losses, self.update)


def run_single_stage(ctx, resume: dict | None = None) -> None:
    """CLIP-HandID's recipe: set up the trainable parts, optimiser and losses, then train."""
    SingleStageTrainer(ctx).run(resume)
