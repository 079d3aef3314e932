"""Analysis: reads run and benchmark folders, draws plots, writes the comparison report. Never
trains, and never imports the training package or JAX: it needs only numpy, pandas, matplotlib
and PyYAML (the generation benchmark imports :mod:`analysis.gen_summary`, not the other way).

Modules: :mod:`analysis.load` (files), :mod:`analysis.labels` (objective, bound and setting
labels read from those files), :mod:`analysis.table` (the tidy table), :mod:`analysis.fits`
(power laws, frontier, headline ratios), :mod:`analysis.edits` (code-edit results),
:mod:`analysis.speed` (benchmark figures), :mod:`analysis.gen_summary` (benchmark summary),
:mod:`analysis.formatting` / :mod:`analysis.plotting` (shared helpers),
:mod:`analysis.context` and :mod:`analysis.sections` (the report's parts) and
:mod:`analysis.report` (the entry point).
"""
