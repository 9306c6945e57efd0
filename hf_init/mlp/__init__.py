"""MLPs for the init studies, trained M at a time as one vectorised ensemble.

- :mod:`hf_init.mlp.model`: the MLP shape, activations (theory's names -> torch), the stacked
  :class:`~hf_init.mlp.model.Ensemble`, the shared standard-normal draws of the initial weights.
- :mod:`hf_init.mlp.training`: :class:`~hf_init.mlp.training.TrainConfig`,
  :func:`~hf_init.mlp.training.train_ensemble` and what it records; diverged members frozen.
- :mod:`hf_init.mlp.study`: the std sweep and the controlled scheme comparison (members and
  their keys), and what a study writes (records.jsonl, results.csv, tb/, summary.json).
- :mod:`hf_init.mlp.args`: the study scripts' arguments (shared flags declared once).
"""
