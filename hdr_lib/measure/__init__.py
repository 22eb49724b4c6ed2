"""Measurement: clocks, the machine, run records, statistics, the benchmark, the ceiling, profiling, several seeds."""
