"""Text features for every identity: the full 77-position text pass vs HandCLIP's pass that stops at the
end-of-text token (exact under the causal mask). Both run side by side in one process; prints the ratio
and the largest difference.

    PYTHONPATH=src python benchmarks/bench_text.py                       # tiny text tower, 300 ids
    PYTHONPATH=src python benchmarks/bench_text.py --backbone ViT-B-16 --ids 64
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _bench_common import best_of  # noqa: E402

from handclip.model.handclip import build_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-cnn")
    parser.add_argument("--ids", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = [64, 64] if args.backbone.startswith("tiny") else [224, 224]
    model = build_model({"backbone": args.backbone}, {"image_size": size}, num_ids=args.ids).eval()
    learner = model.prompt_learner
    labels = torch.arange(args.ids)
    with torch.inference_mode():
        prompts = learner(labels)
        tokens = learner.tokenized_prompt.expand(args.ids, -1)
        full = model.text_encoder(prompts, tokens)
        cut = model.text_encoder(prompts, tokens, length=learner.prompt_length)
        t_full = best_of(lambda: model.text_encoder(prompts, tokens), args.repeat)[2]
        t_cut = best_of(lambda: model.text_encoder(prompts, tokens, length=learner.prompt_length), args.repeat)[2]
    print(f"{args.backbone}, {args.ids} identities, {torch.get_num_threads()} threads: "
          f"77 positions {t_full:.3f} s, {learner.prompt_length} positions {t_cut:.3f} s -> {t_full / t_cut:.1f}x; "
          f"max |difference| {float((full - cut).abs().max()):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
