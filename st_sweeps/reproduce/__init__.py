"""Rebuild the paper's tables: ``python reproductions/<dataset>.py [--scale smoke|paper] ...``.

A manifest (``reproductions/manifests/<dataset>.yaml``, loaded strictly into ``Manifest``) pins,
for every row of the paper's table, the experiment config at paper scale and the numbers the paper
reported. This module trains and evaluates each (row, seed) — in-process with the ``Trainer``, or
over Ray workers with ``st_sweeps.ray_train`` — and writes a table of paper vs. ours (Markdown, CSV,
LaTeX) and a figure.

Scales:
- ``paper``: the manifest's configs as pinned. Before anything trains, the data files are counted
  against ``st_sweeps.data.prepare``'s expectations and the Inception weights are looked up; if
  something is missing the command stops with exit status 2 and says what goes where.
- ``smoke``: every row shrunk by one rule (``smoke_config``) to run in seconds on a CPU: the same
  SDE, truncation, objective, network family, optimiser and sampler, with a tiny network, tiny
  images, a few steps and a tiny evaluation. Its numbers check the pipeline; the tables say so in
  their header and in every cell ("[smoke]"), and never present them as a reproduction.

Layout of the output folder (default ``reproductions/results/<dataset>/<scale>/``)::

    <row_id>/seed_<n>/         the Trainer's run folder (config.yaml, metrics.jsonl, checkpoints/)
    <row_id>/seed_<n>/result.json   written when the (row, seed) is finished: final metrics and
                                    the reasons for missing ones
    <row_id>/seed_<n>_ray/     Ray Train's checkpoint index (only with --workers > 1)
    table.md, table.csv, table.tex, figure.png
    mlflow_runs.json           the MLflow run ids, so a rerun logs into the same runs
    gpu_hours.json             the measured step time behind the GPU-hours estimate

Resuming: a (row, seed) with ``result.json`` and the checkpoint of its last step is finished and
is not trained again; an interrupted one resumes from its latest checkpoint (the Trainer does
that). The tables are a pure function of the manifest and the files above, so a rerun writes them
byte for byte the same.

MLflow: one experiment per data set (``st_sweeps-reproduce-<dataset>``); per invocation scale one
parent run (tag ``kind=reproduction``) holding the tables as artifacts; under it one run per row
(tags ``kind=row``, ``row_id``, ``scale``) with the paper numbers as params and the seed
aggregates as metrics; under each row run one child run per seed (tag ``kind=seed``) with the
training curves.

The package, one module a concern: ``manifest`` (the schema), ``scaling`` (a row's config at each
scale), ``prerequisites`` (data, weights, launcher), ``results`` (result.json per seed), ``runs``
(MLflow run ids), ``launch`` (training in-process or on Ray), ``tables`` (aggregation, tables,
figure), ``gpu_hours`` (the compute estimate), ``orchestrate`` (every row and seed) and ``cli``.
Import from the module that owns a name (``from st_sweeps.reproduce.manifest import load_manifest``):
this file imports nothing, so that a lower layer (``st_sweeps.parity`` reads manifests) can use
the schema without pulling in training and tables.
"""
