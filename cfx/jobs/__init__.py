"""cfx.jobs: the whole jobs a user runs, on top of every stage.

- :func:`fit` (``cfx fit``): fit the trust scores and the counterfactual generators' index on reference data and
  write a fitted folder;
- :func:`explain` (``cfx explain``): score → flag → counterfactuals → evidence → explanation → review report,
  resumable; returns an :class:`ExplainResult`;
- :func:`audit` (``cfx audit``): property sensitivity, slices and the trust link of a data set, resumable; returns
  an :class:`AuditResult`.
"""

from .auditing import audit
from .common import AuditResult, ExplainResult
from .explaining import explain
from .fitting import fit

__all__ = ["AuditResult", "ExplainResult", "audit", "explain", "fit"]
