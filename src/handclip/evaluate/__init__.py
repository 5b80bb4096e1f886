"""Evaluation: protocol metrics, verification and open-set figures, score calibration to likelihood ratios."""
