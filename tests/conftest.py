"""Test-session setup.

Triton runs on a CPU only in its interpreter, and the interpreter must be chosen before triton is
first imported: set it here, before any test module imports lit_idpo.kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
