"""hdr_lib: the paper's LeNet-5 experiment on MNIST as a small library (model, data, timed training, records)."""

from hdr_lib.config import PAPER, TrainConfig

__all__ = ["PAPER", "TrainConfig"]
__version__ = "0.1.0"
