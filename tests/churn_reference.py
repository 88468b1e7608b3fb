"""Top-k churn per group computed the plain way (Python sets, one group and pair at a time): the
independent reference the churn tests compare reprokit.metrics.churn against."""

import itertools

import numpy as np

from reprokit.metrics.pd import EPS


def brute_force_churn(preds, groups, k):
    """Per pair: mean over groups with > k examples of 1 - |top-k overlap| / k (plain Python)."""
    preds = np.clip(np.asarray(preds, dtype=np.float64), EPS, 1 - EPS)
    members = {}
    for n, g in enumerate(groups):
        members.setdefault(g, []).append(n)
    big = [idx for idx in members.values() if len(idx) > k]

    def top(m, idx):
        return set(sorted(idx, key=lambda n: (-preds[m][n], n))[:k])

    out = []
    for i, j in itertools.combinations(range(len(preds)), 2):
        out.append(sum(1 - len(top(i, idx) & top(j, idx)) / k for idx in big) / len(big))
    return np.array(out), len(big), len(members) - len(big)
