"""Protocol evaluation: retrieval metrics (metrics, rerank), Monte Carlo runs (protocol), reports and
pictures (report), and the published numbers they are compared with (references); verification and
open-set figures (verification, openset) and scores as likelihood ratios (calibration, crosscal,
calibrate), brought together per run in forensic."""
