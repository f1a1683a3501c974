"""Training and evaluation runs: the Lightning module, losses and schedules, the speed knobs,
building components from the config, checkpoints, resume, experiment trackers. Imports `core`,
`data`, `models` and `evaluation`."""
