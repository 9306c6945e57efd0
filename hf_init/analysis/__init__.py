"""Analysis of recorded runs: regimes and paired statistics of the MLP studies (`mlp`),
per-layer variance summaries of pretraining runs (`variance`), depth-dependent equilibration of
Q/K/V variances and the paper's claims as checks over schemes and seeds (`equilibration`)."""
