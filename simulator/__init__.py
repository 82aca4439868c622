"""A synthetic feed world whose engagement probabilities are known, and the item catalog file it writes.

`config` says what world to simulate; `world` draws it (`population`: users, a growing catalog)
and plays the span out with `run` (rate control, outcomes, feedback), which asks `sessions` who
requests and `feed` what they are shown, and follows the user model in `behaviour`.
`catalog` owns the catalog parquet (schema, writer, the one reader that the stream
job, the feed API, training and the benchmarks use); `truth` holds the per-impression
probabilities for evaluation.

The simulation is pure: no I/O, no wall clock and no global random state; the same config gives
the same events byte for byte (with the same numpy, whose Generator streams are only stable
within a version). Only the catalog and ground-truth writers and readers touch files. This package
imports `features` only: never training/, streaming/, serving/ or a model library.
"""
