"""Checkpoint safety: Lightning checkpoints are read with ``torch.load(weights_only=True)``, never unpickling code.

A checkpoint that cannot be used (missing, damaged, not a Lightning checkpoint, or holding objects only
unpickling code could restore) raises :class:`CheckpointError` naming the file, the cause and the fix.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Union

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_idpo.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: missing, damaged, not a Lightning checkpoint, or holding objects
    that only unpickling code could restore."""


def load_checkpoint_safely(path: Union[str, Path], map_location: Any = "cpu") -> dict:
    """Read a Lightning checkpoint file with ``torch.load(weights_only=True)`` (tensors and plain Python
    values only, never code), or raise :class:`CheckpointError` naming the file, the cause and the fix.

    lit-idpo's own checkpoints always load this way (hyperparameters are stored as plain values).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory (a sharded checkpoint); this reader takes one file. "
                              f"Resume sharded runs with the same strategy, which reads the directory itself.")
    size = path.stat().st_size
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[-1][:300]
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain values ({first_line}). lit-idpo loads "
            f"checkpoints without unpickling code; a checkpoint written by lit-idpo never needs it. If you wrote this "
            f"file yourself and trust it, convert it once with torch.load(..., weights_only=False).") from error
    except Exception as error:  # a truncated or foreign file: zip/format errors of several types
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size} bytes): {type(error).__name__}: {str(error)[:300]}. The file is "
            f"damaged (e.g. cut short by an interrupted save or a full disk) or not a PyTorch checkpoint; resume from "
            f"an earlier checkpoint.") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry).")
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that reads with :func:`load_checkpoint_safely`: never unpickles code, and a
    damaged file gives a :class:`CheckpointError` naming it. ``Trainer(plugins=[SafeCheckpointIO()])``."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if weights_only is False:
            raise CheckpointError("SafeCheckpointIO loads checkpoints with weights_only=True only.")
        return load_checkpoint_safely(path, map_location=map_location or (lambda storage, loc: storage))


__all__ = ["CheckpointError", "SafeCheckpointIO", "load_checkpoint_safely"]
