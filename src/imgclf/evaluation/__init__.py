"""Evaluation: metrics, TTA, checkpoint evaluation, training diagnosis and the LR finder."""
