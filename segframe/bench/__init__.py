"""`python -m segframe.bench`: throughput, speed-knob, evaluation-cost and memory figures measured
side by side in one run (see `segframe/bench/__main__.py` for the parts and their flags).

  common      machine description, matmul peak, clocks, RSS, child processes, tables
  step        train-step speed knobs (channels_last, bf16/fp16 autocast, torch.compile, cudnn.benchmark)
  overhead    SegModule under pl.Trainer vs a bare loop
  loader      shard pipeline, shards vs per-file Dataset, DataLoader knobs
  evaluation  confusion-matrix update vs forward pass
  memory      training peak RSS; loader RSS vs dataset size
  convert     converter throughput (and the generated VOC-like tree the loader parts read)

Nothing here is asserted in tests: timings are printed, to be read and recorded.
"""
