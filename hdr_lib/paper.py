"""Everything the paper states, in one place: its settings, its network, its hardware and its claims.

"Analysis of GPU-Accelerated Deep Neural Networks for Handwritten Digit Recognition". Every other module takes the
paper's numbers from here; nothing else types them in. Where the paper is silent (the step decay's schedule, how
"consistently" and "around" are read), the reading is ours and lives with the code that uses it, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

# §3.2: the data.
TRAIN_IMAGES = 60_000
TEST_IMAGES = 10_000
IMAGE_SIDE = 28
PIXEL_SCALE = "[0,1]"  # "Images normalized by scaling pixel values to [0,1]"

# §3.4: the training configuration.
LOSS = "cross_entropy"  # "Cross-entropy loss"
MOMENTUM = 0.9  # "SGD with momentum = 0.9"
LR = 0.01  # "0.01 with step decay" (the schedule is not given)
BATCH_SIZE = 64
EPOCHS = 20
FRAMEWORK = "TensorFlow 2.x with CUDA 10.1 and cuDNN 7.6"

# §3.3: the network, layer by layer as the paper's table gives it: (layer, what the paper says, its size).
TABLE_3_3 = (
    ("Input", "28x28 grayscale image", None),
    ("Conv1", "6 filters, 5x5 kernel, stride 1, ReLU", 6),
    ("Pool1", "max pooling 2x2, stride 2", None),
    ("Conv2", "16 filters, 5x5 kernel, stride 1, ReLU", 16),
    ("Pool2", "max pooling 2x2, stride 2", None),
    ("Flatten", "flatten for the fully connected layers", None),
    ("FC1", "120 neurons, ReLU", 120),
    ("FC2", "84 neurons, ReLU", 84),
    ("Output", "10 neurons, softmax", 10),
)
PARAMETERS = 44_426  # not stated by the paper: what its table gives on a 28x28 input without padding (tested)


@dataclass(frozen=True)
class Hardware:
    name: str  # as §3.4 gives it
    short: str  # for a figure's legend
    cores: int | None = None
    memory_gb: float | None = None


# §3.4: the two machines.
CPU = Hardware("Intel Core i7 (4 cores, 8 threads) at 3.4 GHz", "Intel Core i7, 4 cores, 3.4 GHz", cores=4)
GPU = Hardware("NVIDIA GeForce GTX 1080 Ti (11 GB VRAM)", "GeForce GTX 1080 Ti, 11 GB", memory_gb=11.0)
HARDWARE = {"cpu": CPU, "cuda": GPU}


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # the claim, in short
    section: str  # where the paper says it
    value: float  # the paper's number, in `unit`
    unit: str
    rule: str  # how a verdict is reached: time, speedup, accuracy, accuracy_gap, utilisation, memory
    device: str  # cpu, cuda, or both


# §4: the results the paper reports.
CPU_SECONDS = 3600.0  # §4.1, 20 epochs
GPU_SECONDS = 300.0  # §4.1, 20 epochs
SPEEDUP = 12.0  # §4.1, "approximately 12x"
CPU_ACCURACY = 98.2  # §4.2, %
GPU_ACCURACY = 98.3  # §4.2, %
GPU_UTILISATION = 90.0  # §4.3, "consistently above 90%"
GPU_MEMORY_GB = 6.0  # §4.3, "averaged around 6 GB of the available 11 GB"

CLAIMS = (
    Claim("cpu_time", "CPU training time, 20 epochs", "§4.1", CPU_SECONDS, "s", "time", "cpu"),
    Claim("gpu_time", "GPU training time, 20 epochs", "§4.1", GPU_SECONDS, "s", "time", "cuda"),
    Claim("speedup", "Speedup, CPU time / GPU time", "§4.1", SPEEDUP, "x", "speedup", "both"),
    Claim("cpu_accuracy", "CPU test accuracy", "§4.2", CPU_ACCURACY, "%", "accuracy", "cpu"),
    Claim("gpu_accuracy", "GPU test accuracy", "§4.2", GPU_ACCURACY, "%", "accuracy", "cuda"),
    Claim("accuracy_gap", "GPU minus CPU accuracy (\"comparable\")", "§4.2", round(GPU_ACCURACY - CPU_ACCURACY, 6),
          "pp", "accuracy_gap", "both"),
    Claim("gpu_utilisation", "GPU utilisation, \"consistently above\"", "§4.3", GPU_UTILISATION, "%", "utilisation",
          "cuda"),
    Claim("gpu_memory", "GPU memory in use, \"averaged around\"", "§4.3", GPU_MEMORY_GB, "GB", "memory", "cuda"),
)
CLAIM = {claim.key: claim for claim in CLAIMS}

# §5: the directions the paper leaves to future work.
FUTURE_WORK = ("more advanced architectures such as ResNet or Transformer-based models", "mixed precision training",
               "distributed GPU training")
