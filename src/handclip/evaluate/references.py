"""Published numbers on the 11k / HD protocols, quoted (not measured; docs/method.md, "Reference numbers").

They are printed beside HandCLIP's measured figures and always labelled as quoted.
"""

from __future__ import annotations

# (method, {subset: (rank1, mAP)}, source). Percentages.
QUOTED_RESULTS = [
    ("MBA-Net (ResNet-50 + attention, 2022)", {"11k_dorsal_r": (97.45, 97.98)}, "as cited in an earlier HandCLIP prototype's report"),
    ("ABD-Net", {"11k_dorsal_r": (95.89, 96.76)}, "as cited in an earlier HandCLIP prototype's report"),
    ("GPA-Net", {"11k_dorsal_r": (94.80, 95.72)}, "as cited in an earlier HandCLIP prototype's report"),
    ("RGA-Net", {"11k_dorsal_r": (94.77, 95.67)}, "as cited in an earlier HandCLIP prototype's report"),
    ("HandCLIP prototype, ViT-B/16, two-stage", {"11k_dorsal_r": (88.18, 92.20)}, "its own report (code had bugs)"),
    ("CLIP zero-shot image features, ViT-B/16", {"11k_dorsal_r": (71.42, 78.98)}, "an earlier HandCLIP prototype's report"),
]

SUBSETS = ["11k_dorsal_r", "11k_dorsal_l", "11k_palmar_r", "11k_palmar_l", "hd"]
SUBSET_TITLES = {
    "11k_dorsal_r": "11k dorsal right",
    "11k_dorsal_l": "11k dorsal left",
    "11k_palmar_r": "11k palmar right",
    "11k_palmar_l": "11k palmar left",
    "hd": "HD",
}


def subset_key(dataset: str, subset: str | None) -> str:
    """The benchmark name of a manifest record's subset: 11k_dorsal_r, hd, or the dataset (and folder) name."""
    if dataset == "hd":
        return "hd"
    if not subset or subset == dataset:
        return dataset
    return f"{dataset}_{subset}"


def subset_title(key: str) -> str:
    return SUBSET_TITLES.get(key, key.replace("_", " "))


def subset_label(dataset: str, subset: str | None) -> str:
    """A report's name for a manifest record's subset: the benchmark title (``11k dorsal right``, ``HD``), else
    the dataset and subset names exactly as the manifest holds them (``folder my_hands``)."""
    key = subset_key(dataset, subset)
    if key in SUBSET_TITLES:
        return SUBSET_TITLES[key]
    return dataset if key == dataset else f"{dataset} {subset}"


# Reported above MBA-Net, without numbers we can quote.
QUOTED_WITHOUT_NUMBERS = ["CLIP-HandID (2025, arXiv 2506.12447) reports results above MBA-Net on this protocol; "
                          "no numbers are quoted here."]


def benchmark_table(measured: list[tuple[str, dict[str, dict]]], include_quoted: bool = True,
                    notes: list[str] | None = None) -> str:
    """Paper-layout Markdown table: rows are methods, columns each subset's rank-1 and mAP.

    ``measured`` holds (row label, {subset: {"rank1": {"mean", "std"}, "mAP": {...}}}) with metrics in [0, 1].
    """
    header = "| method | " + " | ".join(f"{SUBSET_TITLES[s]} R1 | {SUBSET_TITLES[s]} mAP" for s in SUBSETS) + " | source |"
    rule = "|" + "---|" * (2 * len(SUBSETS) + 2)
    lines = [header, rule]
    for label, by_subset in measured:
        cells = []
        for subset in SUBSETS:
            metrics = by_subset.get(subset)
            for key in ("rank1", "mAP"):
                if not metrics or key not in metrics:
                    cells.append("–")
                else:
                    m = metrics[key]
                    cells.append(f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " | measured here |")
    if include_quoted:
        for label, by_subset, source in QUOTED_RESULTS:
            cells = []
            for subset in SUBSETS:
                r1_map = by_subset.get(subset)
                cells.extend(["–", "–"] if r1_map is None else [f"{r1_map[0]:.2f}", f"{r1_map[1]:.2f}"])
            lines.append(f"| {label} | " + " | ".join(cells) + f" | quoted, not measured: {source} |")
    footnotes = list(notes or []) + (QUOTED_WITHOUT_NUMBERS if include_quoted else [])
    if include_quoted:
        footnotes.append("Quoted rows are copied from others' reports (docs/method.md, 'Reference numbers'), not measured by this code.")
    text = "\n".join(lines) + "\n"
    return text + ("\n" + "\n".join(f"- {note}" for note in footnotes) + "\n" if footnotes else "")
