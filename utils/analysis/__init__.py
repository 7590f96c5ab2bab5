"""Analysis of finished runs: feature clustering, alpha efficiency, run summaries, plots."""
