"""Evaluation: metrics, bootstrap intervals and paired tests, run reports and plots, comparisons, challenge submissions."""
