"""`python -m segframe.bench`: throughput, speed-knob, evaluation-cost and memory figures measured
side by side in one run (see `segframe/bench/options.py` for the parts and their flags).

  options     the command line: parts, flags, --quick sizes
  parts       one function per part: runs it with the command line's settings, returns its text
  common      machine description, matmul peak, clocks, RSS, child processes, tables
  step        the training step (the one overhead and memory time too) and its speed knobs
              (channels_last, bf16/fp16 autocast, torch.compile, cudnn.benchmark)
  overhead    SegModule under pl.Trainer vs that step in a bare loop
  loader      shard pipeline, shards vs per-file Dataset, DataLoader knobs
  evaluation  confusion-matrix update vs forward pass
  memory      training peak RSS; loader RSS vs dataset size
  convert     converter throughput
  checkpoint  checkpoint write cost: atomic write vs Lightning's writer
  synthetic   generated VOC / SBD trees on disk (the convert and loader parts read them; tests too)

Nothing here is asserted in tests: timings are printed, to be read and recorded.
"""
