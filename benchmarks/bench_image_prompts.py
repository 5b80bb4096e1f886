"""The cost of image-conditioned prompts: one text-encoder pass per image per step.

Two side-by-side measurements in one process, each printed with its ratio:

1. The text side of one batch of image prompts (inversion network + text encoder, forward and backward):
   the full 77-position pass against HandCLIP's pass that stops at the end-of-text token (exact under
   the causal mask: the script prints the largest difference between the two features).
2. A whole stage-2 training step (``Stage2Trainer.train_step``, the losses and update ``handclip train``
   runs per batch) on the same P x K batch, for identity prompts (CLIP-ReID: every identity's text feature
   computed once, fixed), image prompts without gradient (CLIP-HandID's code), image prompts with
   gradient, identity + image prompts with gradient, and no text side (ID + triplet only), the variants of
   benchmarks/ablation_prompts.py; timed in alternating rounds (median per step).

    PYTHONPATH=src python benchmarks/bench_image_prompts.py                  # tiny-cnn 64x64 (the demo's model)
    PYTHONPATH=src python benchmarks/bench_image_prompts.py --backbone ViT-B-16 --image-size 224 --ids 8 --k 4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _bench_common import best_of, interleaved_timing, machine_line, pk_batch, training_context  # noqa: E402

from handclip.config import config_from_dict  # noqa: E402
from handclip.model.handclip import build_model  # noqa: E402
from handclip.train.stage2 import Stage2Trainer  # noqa: E402

# (model keys, stage-2 keys) of each step; the image-prompt steps leave out the identity image->text loss,
# as in benchmarks/ablation_prompts.py.
NO_I2T = {"i2t_weight": 0.0}
VARIANTS = {
    "identity prompts (CLIP-ReID, fixed text)": ({}, {}),
    "image prompts, no gradient (CLIP-HandID's code)": ({"prompt": "image", "inversion_grad": False}, NO_I2T),
    "image prompts, gradient": ({"prompt": "image"}, NO_I2T),
    "identity + image prompts, gradient": ({"prompt": "both"}, NO_I2T),
    "no text side (ID + triplet only)": ({}, NO_I2T),
}


def text_pass_ratio(backbone: str, size: int, batch: int, repeat: int) -> str:
    """Forward + backward of the image-prompt text path, 77 positions against the end-of-text prefix."""
    torch.manual_seed(0)
    model = build_model({"backbone": backbone, "prompt": "image"}, {"image_size": [size, size]}, num_ids=8).train()
    prompts, encoder = model.image_prompts, model.text_encoder
    learner = prompts.learner
    image_proj = torch.randn(batch, model.embed_dim, requires_grad=True)
    pad = 77 - learner.length
    tokens_full = torch.cat([learner.tokenized_prompt, torch.zeros(1, pad, dtype=torch.long)], 1).expand(batch, -1)
    tokens_cut = learner.tokenized_prompt.expand(batch, -1)

    def run(full: bool) -> torch.Tensor:
        embedded = learner(prompts.inversion(image_proj))
        if full:  # the rest of the context, as a 77-token pass would carry it
            tail = torch.zeros(batch, pad, embedded.shape[2])
            out = encoder(torch.cat([embedded, tail], 1), tokens_full)
        else:
            out = encoder(embedded, tokens_cut, length=learner.length)
        out.sum().backward()
        return out.detach()

    torch.manual_seed(1)
    _, t_full, _ = best_of(lambda: run(True), repeat)  # CPU seconds: fair on a shared machine
    torch.manual_seed(1)
    _, t_cut, _ = best_of(lambda: run(False), repeat)
    prompts.eval()
    with torch.no_grad():  # without dropout, the two passes must give the same features
        embedded = learner(prompts.inversion(image_proj))
        diff = (encoder(torch.cat([embedded, torch.zeros(batch, pad, embedded.shape[2])], 1), tokens_full)
                - encoder(embedded, tokens_cut, length=learner.length)).abs().max()
    return (f"text side of {batch} image prompts, forward + backward, CPU time: 77 positions {1000 * t_full:.1f} ms, "
            f"{learner.length} positions {1000 * t_cut:.1f} ms -> {t_full / t_cut:.1f}x; "
            f"max |difference| {float(diff):.1e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-cnn")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--ids", type=int, default=16, help="identities per batch (P)")
    parser.add_argument("--k", type=int, default=4, help="images per identity (K)")
    parser.add_argument("--num-ids", type=int, default=300, help="training identities (text anchors)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(machine_line(device))
    print(text_pass_ratio(args.backbone, args.image_size, args.ids * args.k, repeat=max(args.rounds, 3)))

    images, labels = pk_batch(args.num_ids, args.ids, args.k, args.image_size, device)
    steppers = {}
    for name, (model_keys, stage2_keys) in VARIANTS.items():
        config = config_from_dict({
            "data": {"image_size": [args.image_size, args.image_size], "num_workers": 0},
            "model": {"backbone": args.backbone, **model_keys},
            "stage2": {"ids_per_batch": args.ids, "images_per_id": args.k, **stage2_keys},
            "runtime": {"device": "cpu", "progress": False}})
        torch.manual_seed(0)
        model = build_model(config.model, config.data, args.num_ids)
        trainer = Stage2Trainer(training_context(config, model, args.num_ids, device))
        trainer.train_step(images, labels)  # warm-up
        steppers[name] = lambda trainer=trainer: trainer.train_step(images, labels)
    timing = interleaved_timing(steppers, args.rounds, args.steps, device)
    base_wall, base_cpu = timing[next(iter(VARIANTS))]
    print(f"stage-2 step, {args.backbone} {args.image_size}x{args.image_size}, batch {args.ids} x {args.k}, "
          f"{args.num_ids} identities, {torch.get_num_threads()} thread(s), no GPU in this run:")
    for name, (wall, cpu) in timing.items():
        print(f"  {name:50s} {1000 * wall:8.1f} ms wall, {1000 * cpu:8.1f} ms CPU per step -> "
              f"{cpu / base_cpu:.2f}x the identity step (CPU time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
