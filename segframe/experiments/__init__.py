"""Many runs at once: the experiment library (reference numbers), results tables, reproduction of
published numbers, sweeps and their summaries, comparison of runs. Imports `engine` and below."""
