"""The figures the learning tests assert on, measured per CPU kernel family, thread count and seed.

A learning test must hold on every x86-64 CPU, whose PyTorch picks other kernels (AVX-512, AVX2 or
scalar ATen kernels; other MKL / oneDNN code paths), and each sums in another order. This runs the
functions of ``tests/learning_figures.py`` once per (kernel family, threads, seed), each kernel family in
its own process (``ATEN_CPU_CAPABILITY`` is read when torch loads), and prints one row per run and the
min / max of each figure over all runs: the spread a test's threshold must clear with a margin.
Seeds stand in for the kernel families of machines this one cannot imitate.

    PYTHONPATH=src python benchmarks/learning_margins.py --seeds 0 1 2 --threads 1 2

Kernel families: ``default``, ``avx2``, ``avx512`` (where the CPU has it) select ATen's kernels;
``avx2-all`` also caps MKL and oneDNN at AVX2. About 45 s per run on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {
    "default": {"ATEN_CPU_CAPABILITY": "default"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "avx2-all": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
# figure -> (the test that asserts on it, its threshold in words)
FIGURES = {
    "demo_before": ("test_training::test_demo_recipe_makes_unseen_identities_retrievable", ""),
    "demo_after": ("", ""),
    "demo_gain": ("", "after - before"),
    "stage1_loss_ratio": ("test_training::test_stage1_lowers_loss_...", "last / first epoch loss"),
    "pretrain_loss_over_chance": ("test_pretrain::test_stage1_prompts_name_their_identity_far_above_chance",
                                  "last pretraining epoch's loss / ln 64"),
    "pretrain_last_over_first": ("", "last / first pretraining epoch's loss"),
    "prompt_top1": ("", "chance 1/12 = 0.083"),
    "broken_lr_top1": ("test_pretrain::test_broken_stage1_stays_near_chance", ""),
    "broken_start_token_top1": ("", ""),
}


def measure(seed: int, threads: int, work: Path) -> dict:
    """Every figure for one seed, in this process's kernel family."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import learning_figures as lf

    from handclip.config import SyntheticConfig
    from handclip.synthetic.dataset import prepare_synthetic

    out = {}
    torch.set_num_threads(threads)
    out["demo_before"], out["demo_after"] = lf.demo_recipe_rank1(work / "demo", seed, threads)
    out["demo_gain"] = out["demo_after"] - out["demo_before"]

    torch.set_num_threads(threads)  # the demo sets its own thread count
    # The tiny_manifest fixture of tests/training_helpers.py.
    manifest = prepare_synthetic(work / "tiny", SyntheticConfig(train_ids=8, test_ids=4, images_per_id=4,
                                                                image_size=32), runs=2, seed=0)
    manifest.write(work / "tiny.csv")
    from training_helpers import make_context

    losses = lf.stage1_losses(make_context(lf.stage1_config(work / "tiny.csv", seed)))
    out["stage1_loss_ratio"] = losses[-1] / losses[0]

    pretrained = lf.pretrain_small(work / "small.pt", seed)
    out["pretrain_loss_over_chance"] = pretrained.history[-1]["loss"] / pretrained.history[-1]["chance"]
    out["pretrain_last_over_first"] = pretrained.history[-1]["loss"] / pretrained.history[0]["loss"]
    out["prompt_top1"], _ = lf.stage1_prompt_accuracy(str(pretrained.path), work / "s1", seed)
    out["broken_lr_top1"], _ = lf.broken_stage1_prompt_accuracy(str(pretrained.path), work / "b1",
                                                                 "prompt_lr_near_zero", seed)
    out["broken_start_token_top1"], _ = lf.broken_stage1_prompt_accuracy(str(pretrained.path), work / "b2",
                                                                          "text_read_at_start_token", seed)
    out["capability"] = torch.backends.cpu.get_cpu_capability()
    out["threads_used"] = torch.get_num_threads()
    return out


def worker(seeds: list[int], threads: int) -> None:
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="learning-margins-") as tmp:
            os.environ["HANDCLIP_CACHE_DIR"] = str(Path(tmp) / "cache")
            row = measure(seed, threads, Path(tmp))
        print("ROW " + json.dumps({"seed": seed, "threads": threads, **row}), flush=True)


def native_capability() -> str:
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()


def print_table(rows: list[dict]) -> None:
    """One row per run, then the min and max of each figure over all runs."""
    names = list(FIGURES)
    print("\n| kernels | threads | seed | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for row in rows:
        print(f"| {row['kernels']} ({row['capability']}) | {row['threads_used']} | {row['seed']} | "
              + " | ".join(f"{row[n]:.4f}" for n in names) + " |")
    print("| **min** | | | " + " | ".join(f"{min(r[n] for r in rows):.4f}" for n in names) + " |")
    print("| **max** | | | " + " | ".join(f"{max(r[n] for r in rows):.4f}" for n in names) + " |")
    for name, (test, meaning) in FIGURES.items():
        if test or meaning:
            print(f"{name}: {meaning} {('(' + test + ')') if test else ''}".strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS))
    parser.add_argument("--rows", nargs="+", metavar="LOG", help="only print the table of these runs' output")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.seeds, args.threads[0])
        return
    if args.rows:
        print_table([json.loads(line) for log in args.rows for line in Path(log).read_text().splitlines()
                     if line.startswith("{")])
        return
    native = native_capability()
    print(f"CPU capability without override: {native}; torch {__import__('torch').__version__}")
    kernels = [k for k in args.kernels if k != "avx512" or native.startswith("AVX512")]
    rows = []
    for name in kernels:
        for threads in args.threads:
            # Passive waiting: on a loaded machine, spinning OpenMP threads made 2-thread runs ~3x slower.
            env = {**os.environ, **KERNELS[name], "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                   "OMP_WAIT_POLICY": "PASSIVE",
                   "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
            cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--seeds", *map(str, args.seeds)]
            with tempfile.TemporaryFile("w+") as errors:
                worker_process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
                for line in worker_process.stdout:  # each seed's row as soon as it is measured
                    if line.startswith("ROW "):
                        row = {"kernels": name, **json.loads(line[4:])}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                if worker_process.wait():
                    errors.seek(0)
                    sys.exit(f"{name} / {threads} threads failed:\n{errors.read()[-3000:]}")
    print_table(rows)


if __name__ == "__main__":
    main()
