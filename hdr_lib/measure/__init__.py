"""Measurement: clocks, the machine, run records, statistics, the network's cost (FLOPs), the benchmark, the ceiling,
profiling, several seeds."""
