"""Metrics, torchmetrics-style functional modules (numpy, float64, chunked over examples).

- `reprokit.metrics.pd`: the PD keys of docs/methods.md §1 (`prediction_difference`), per-pair
  values, PD by bucket of the ensemble mean, per-example histogram.
- `reprokit.metrics.accuracy`: AUC (ties by average rank), log-loss, calibration.
- `reprokit.metrics.churn`: top-k churn per group (user) for ranking use.
- `reprokit.metrics.stats`: bootstrap CI over replicas, paired tests, Holm, Pareto front.
- `reprokit.metrics.summary`: `summarize`, the summary document of docs/contracts.md.
"""
