"""Forensic evaluation and evidence: verification (FMR/FNMR, DET), open-set identification (FNIR/FPIR),
likelihood-ratio calibration (fit, load, apply, bounds, verbal scale), identity-disjoint
cross-calibration, and the hash-chained audit log. Used by ``evaluate`` and ``gallery``; imports neither."""
