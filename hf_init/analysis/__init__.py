"""Analysis of recorded runs: regimes and paired statistics of the MLP studies (`mlp`),
per-layer variance summaries of pretraining runs (`variance`)."""
