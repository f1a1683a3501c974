"""Many runs at once: the experiment library (reference numbers), results tables, reproduction of
published numbers, sweeps and their summaries, comparison of runs. Imports any folder below it
(`deploy` and down; today it needs `engine` and below)."""
