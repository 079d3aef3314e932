"""Tasks: a data set with its own training source, metrics and evaluation (code edits)."""
