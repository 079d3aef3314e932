"""Sample-quality evaluation: statistics of samples and held-out text, and the judge."""
