"""Language-model pretraining: model families, the init override, recorders, guards, the run
folder, the job and the init-scheme study."""
