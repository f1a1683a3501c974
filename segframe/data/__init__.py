"""Datasets: the converters that read raw datasets (sources/), the shard format and its manifest,
conversion, and the datamodule that reads shards into augmented batches. Imports `core` only."""
