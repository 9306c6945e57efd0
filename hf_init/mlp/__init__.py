"""MLP studies: the stacked ensemble, its training, the std sweep and scheme comparison, jobs."""
