"""Stage 1, a recipe on ``train.loop``: learn one text prompt per identity against fixed image features
(docs/method.md, "Stage 1").

Everything but the prompt vectors is frozen. Every training image is encoded once with the eval
transform (no augmentation); the features are cached on disk under
``<cache>/features/<key>.pt``, keyed by a hash of the image encoder's weights, the transform and the
training records, so a second experiment on the same data skips the encoding pass.
Each epoch walks a random permutation of the cache in consecutive batches (the last one shorter, never
empty); the loss is the supervised-contrastive image->text plus text->image loss on raw dot products
(``losses.logits``), plus an optional L2 penalty on the prompts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import logging
import time

import torch
from tqdm import tqdm

from ..atomic import atomic_write_bytes
from ..data.loaders import build_eval_loader, first_resize
from ..runtime import autocast, cache_root, make_grad_scaler, resolve_amp_dtype
from .hooks import LrSchedule, TrainingState, training_hooks
from .loop import TrainLoop
from .losses import SupConLoss, image_text_scale, prompt_l2
from .optim import build_stage1_optimizer

log = logging.getLogger(__name__)


def _tensor_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def _records_digest(records) -> str:
    """The training images as the manifest lists them (path, pid) plus each file's size and mtime, so an
    image rewritten in place is encoded again rather than served from a stale cache entry."""
    digest = hashlib.sha256()
    for r in records:
        try:
            st = os.stat(r.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"  # the loader raises the clear error when it reads the image
        digest.update(f"{r.path}\t{r.pid}\t{stamp}\n".encode())
    return digest.hexdigest()


def feature_cache_key(model, data_cfg, records, dtype: torch.dtype | None = None) -> str:
    """Hash of everything the cached features depend on: backbone and its geometry, encoder weights, the
    eval transform (input size, first resize, interpolation, normalisation), the encoding precision and the images."""
    model_spec = getattr(model, "spec", {}).get("model", {})
    spec = {
        "backbone": model_spec.get("backbone"),
        "patch_stride": model_spec.get("patch_stride"),
        "rn_last_stride": model_spec.get("rn_last_stride"),
        "encoder": _tensor_digest(model.image_encoder),
        "image_size": list(data_cfg.image_size),
        "first_resize": first_resize(data_cfg, train=False).tag,
        "interpolation": data_cfg.interpolation.eval,
        "mean": list(data_cfg.pixel_mean),
        "std": list(data_cfg.pixel_std),
        "dtype": str(dtype),
        "records": _records_digest(records),
        "version": 3,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


@torch.inference_mode()
def encode_training_images(model, records, label_map, data_cfg, eval_cfg, device, dtype=None, progress=False):
    """Projected image features (float32, on CPU) and contiguous labels for ``records``, in order."""
    was_training = model.training
    model.eval()
    loader = build_eval_loader(data_cfg, list(records), eval_cfg.batch_size)
    feats, labels = [], []
    iterator = loader
    if progress:
        iterator = tqdm(loader, desc="stage1 encode", unit="batch", leave=False)
    try:
        for batch in iterator:
            images, index = batch[0], batch[2]
            with autocast(device, dtype):
                out = model(images.to(device, non_blocking=True))
            feats.append(out.image_proj.float().cpu())
            labels.append(torch.tensor([label_map[records[int(i)].pid] for i in index], dtype=torch.long))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def cached_training_features(ctx):
    """Load the stage-1 features from the cache, or encode and store them."""
    cfg = ctx.config
    records = ctx.train_records
    path = None
    dtype = resolve_amp_dtype(ctx.device, cfg.runtime.amp)
    if cfg.stage1.cache_features:
        key = feature_cache_key(ctx.model, cfg.data, records, dtype)
        path = cache_root(cfg.data) / "features" / f"{key}.pt"
        if path.is_file():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                if len(blob["labels"]) == len(records):
                    ctx.log(f"stage 1: {len(records)} image features read from cache {path.name}")
                    return blob["features"], blob["labels"], True
            except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
                pass
    start = time.perf_counter()
    # RNG-neutral (the eval loader draws a seed from the global generator), so a cache hit and a cache
    # miss leave training on the same random stream.
    with torch.random.fork_rng(devices=[]):
        feats, labels = encode_training_images(ctx.model, records, ctx.label_map, cfg.data, cfg.eval, ctx.device,
                                               dtype, progress=ctx.progress)
    ctx.log(f"stage 1: encoded {len(records)} training images in {time.perf_counter() - start:.1f}s")
    if path is not None and ctx.is_main:
        buffer = io.BytesIO()
        torch.save({"features": feats, "labels": labels}, buffer)
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as exc:
            # A full or read-only cache must not stop training (as for the decode cache): go on without it.
            message = f"cannot write the stage-1 feature cache in {path.parent} ({exc}); continuing without it"
            ctx.log(f"warning: {message}")
            log.warning(message)
    return feats, labels, False


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """One epoch's consecutive batches over ``n`` shuffled items: ceil(n / batch_size) of them, the last
    shorter when batch_size does not divide n, none empty (CLIP-ReID walks an empty last batch when it
    does, and crashes on it)."""
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def run_stage1(ctx, resume: dict | None = None) -> None:
    """Train the prompt vectors for ``stage1.epochs`` epochs (continuing from ``resume`` if given)."""
    cfg, s1, model, device = ctx.config, ctx.config.stage1, ctx.model, ctx.device
    model.freeze_all_but_prompt()
    optimizer, schedule = build_stage1_optimizer(model, s1, cfg.runtime, device)
    feats, labels, _ = cached_training_features(ctx)
    feats, labels = feats.to(device), labels.to(device)
    scale = image_text_scale(model, cfg)
    supcon = SupConLoss()
    dtype = resolve_amp_dtype(device, cfg.runtime.amp)
    # fp16 (runtime.amp: fp16, CLIP-ReID's precision) needs loss scaling here as in stage 2; bf16 and fp32 none.
    scaler = make_grad_scaler(device, dtype)
    slices = batch_slices(len(labels), s1.batch_size)

    def epoch_batches(epoch: int) -> list[torch.Tensor]:
        order = torch.randperm(len(labels)).to(device)  # a new walk through the cached features every epoch
        return [order[s] for s in slices]

    def losses(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        image_feats, batch_labels = feats[idx], labels[idx]
        # Each identity's prompt goes through the text encoder once per batch, however many of its
        # images the batch holds (same features and gradients, fewer text-encoder passes).
        unique_labels, inverse = torch.unique(batch_labels, return_inverse=True)
        with autocast(device, dtype):
            text_feats = model.text_features(unique_labels)[inverse]
        terms = {"i2t": supcon(image_feats, text_feats, batch_labels, batch_labels, scale),
                 "t2i": supcon(text_feats, image_feats, batch_labels, batch_labels, scale)}
        if s1.prompt_l2 > 0:
            terms["prompt_l2"] = s1.prompt_l2 * prompt_l2(model.prompt_learner.ctx)
        return terms

    def update(terms: dict[str, torch.Tensor]) -> None:
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    # Stage 1 leaves the image features unchanged, so it is validated once, at its end (the stage-1 model
    # is then the first candidate for best.pt).
    hooks = training_hooks(ctx, TrainingState(optimizer=optimizer, schedule=schedule, scaler=scaler), resume,
                           schedule=LrSchedule(schedule, s1.schedule, s1.schedule_epochs_from),
                           lr=lambda: optimizer.param_groups[0]["lr"], validate_every=s1.epochs)
    TrainLoop("stage1", s1.epochs, len(slices), model, hooks).run(epoch_batches, losses, update)
