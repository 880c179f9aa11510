"""Testing the papers' claims at CPU scale: ``python reproductions/claims.py --scale smoke|cpu``.

A manifest (``reproductions/claims/claims.yaml``) lists claims; each claim has parts, each part a
statistic computed per seed and a verdict rule fixed before the run. Modules, one concept each:

- ``intervals``        the 95 % Student-t interval over per-seed values
- ``verdict``          the rules (below / above / within a threshold) and how parts combine
- ``manifest``         the schema, loaded strictly from YAML, and the grid of (configuration, seed)
- ``statistics``       what a part measures: contrasts of trained runs, the loss-by-time ratio, and
                       two measurements that need no training
- ``target_variance``  Stable Target Field: the training target's covariance against the reference size
- ``tau_expectation``  Soft Truncation in expectation over τ: Monte-Carlo against the exact weighting
- ``results``          per-seed values -> intervals -> each part's and each claim's verdict (pure)
- ``study``            the runs: Ray Tune over the grid with the sweeps' trial function, MLflow, resume;
                       the command line
- ``report``           the table (Markdown, CSV)
- ``figures``          one figure per claim

Only ``study`` imports ray (lazily, inside its functions) and reaches MLflow only through
``st_sweeps.tracking``; the rest imports torch and the package's math.
"""
