"""The Trainer the ``lit-idpo`` command builds: Lightning's, with one more choice, ``trainer.precision: auto``.

``auto`` resolves, once, where the Trainer is built, to ``bf16-mixed`` where the device multiplies natively
in bf16 and to ``32-true`` elsewhere, and logs one line saying which and why:

- a CUDA GPU: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and later);
- a CPU: the ``avx512_bf16`` or ``amx_bf16`` flag in ``/proc/cpuinfo`` (AMD Zen 4+, Intel Cooper Lake,
  Sapphire Rapids and later; without ``/proc/cpuinfo``, torch's own AVX512-BF16 probe). There oneDNN runs bf16
  matmuls with fp32 accumulation several times faster than fp32 ones (issue 20: 810 against 171 GFLOP/s
  on the project's 2-core machine); elsewhere bf16 is emulated and no faster, so ``auto`` keeps 32-true.

Nothing is guessed from the model. An explicit precision is used as given. An unset precision is
Lightning's default, 32-true, and stays so: the study of issue 20 (DPO in 32-true and bf16-mixed, five seeds,
``benchmarks/bf16_equivalence/``) found bf16-mixed DPO answering worse (-8.2 accuracy points [-10.8, -5.6]),
the error coming from bf16 matmuls in the network, not from the fused head. ``auto`` is a speed choice a
user makes knowingly (``DEFAULT_PRECISION`` below is the one switch, should a later study say otherwise).

Everything downstream reads the resolved value (``trainer.precision``): the precision plugin (autocast, under
which the fused head takes its bf16 path), and the reference cache's key.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import List, Literal, Optional, Tuple, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

try:  # the type Lightning's Trainer declares for its precision
    from lightning.fabric.connector import _PRECISION_INPUT
except ImportError:  # pragma: no cover - moved in some release: accept any value, Lightning still checks it
    _PRECISION_INPUT = Union[int, str]

__all__ = ["AUTO", "DEFAULT_PRECISION", "StepsProgressBar", "Trainer", "native_bf16", "quiet_lightning",
           "resolve_precision"]

AUTO = "auto"
#: What an unset ``trainer.precision`` means: ``None`` is Lightning's default (32-true). The 32-true vs bf16-mixed
#: study of issue 20 did not hold (bf16-mixed DPO answered worse), so it stays None.
DEFAULT_PRECISION: Optional[str] = None
# CPU flags (Linux /proc/cpuinfo names) of native bf16 dot products: AVX512-BF16 and the AMX tile unit.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_CPUINFO = Path("/proc/cpuinfo")


def _cpu_bf16_flags() -> Optional[List[str]]:
    """The native-bf16 flags this CPU reports (``[]``: none), or None where that cannot be read."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # torch's cpuinfo, any OS; private
        return None if probe is None else (["avx512_bf16"] if probe() else [])
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def native_bf16(device_type: str) -> Tuple[bool, str]:
    """Whether matmuls on ``device_type`` (``"cpu"``, ``"cuda"``, ...) run natively in bf16, and why (a phrase)."""
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is available"
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"the GPU ({name}) has native bf16"
        return False, f"the GPU ({name}) has no native bf16"
    if device_type == "cpu":
        flags = _cpu_bf16_flags()
        if flags is None:
            return False, "the CPU's bf16 support could not be read (no /proc/cpuinfo)"
        if flags:
            return True, f"the CPU multiplies natively in bf16 (flags {', '.join(flags)})"
        return False, f"the CPU has no native bf16 (no {' or '.join(CPU_BF16_FLAGS)} flag)"
    return False, f"native bf16 is detected on CPUs and CUDA GPUs only, this accelerator is {device_type!r}"


def _device_type(accelerator) -> str:
    """The device type a Trainer's ``accelerator`` argument (a name or an Accelerator) will train on."""
    if isinstance(accelerator, pl.accelerators.Accelerator):
        for cls, device in ((pl.accelerators.CUDAAccelerator, "cuda"), (pl.accelerators.CPUAccelerator, "cpu")):
            if isinstance(accelerator, cls):
                return device
        return type(accelerator).__name__
    name = str(accelerator).lower()
    mps = torch.backends.mps.is_available()
    if name == "auto":  # Lightning's order for auto (TPUs aside): MPS, then CUDA, then CPU
        return "mps" if mps else "cuda" if torch.cuda.is_available() else "cpu"
    if name == "gpu":
        return "mps" if mps and not torch.cuda.is_available() else "cuda"
    return name


#: Precisions that keep the weights themselves in 16 bits (Lightning's spellings).
HALF_WEIGHT_PRECISIONS = ("bf16-true", "bf16", "16-true")


def resolve_precision(precision, accelerator="auto"):
    """``precision`` as the Trainer gets it: ``auto`` becomes ``bf16-mixed`` or ``32-true`` (and one log line
    says which and why); any other value, None included, is returned unchanged (a 16-bit-weight precision
    with a warning: see :data:`HALF_WEIGHT_PRECISIONS`)."""
    if precision in HALF_WEIGHT_PRECISIONS:
        # bf16 keeps 8 bits of mantissa: an update smaller than about 1/256 of a weight rounds away. Measured
        # (issue 20, the quickstart at lr 1e-5, 16 steps): final-layer validation loss 0.680 in bf16-true
        # against 0.399 in 32-true and 0.413 in bf16-mixed, i.e. bf16-true barely trained.
        rank_zero_warn(f"lit-idpo: trainer.precision={precision} keeps the weights in 16 bits, where a fine-tuning "
                       f"step (AdamW at lr ~1e-5) is mostly rounded away; use bf16-mixed (fp32 weights, bf16 "
                       f"matmuls) unless you have checked that your run still learns.")
    if precision != AUTO:
        return precision
    device = _device_type(accelerator)
    native, why = native_bf16(device)
    chosen = "bf16-mixed" if native else "32-true"
    rank_zero_info(f"lit-idpo: trainer.precision auto -> {chosen}: {why}.")
    return chosen


class _NoTips(logging.Filter):
    """Drops Lightning's advertisements ("💡 Tip: ... try installing litlogger / litmodels") from its log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_NO_TIPS = _NoTips()


def quiet_lightning() -> None:
    """What every fit would otherwise print and no user should act on: Lightning's logger and model-registry
    tips, and its warning that modules are in eval mode (the frozen reference is, on purpose; the model summary
    above it counts them)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _NO_TIPS not in logger.filters:
            logger.addFilter(_NO_TIPS)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class StepsProgressBar(RichProgressBar):
    """Lightning's rich progress bar, without the ``Epoch 0/-2`` it shows for a run bounded by ``max_steps``
    (``max_epochs`` is then -1: no last epoch to show)."""

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's private hook; its own if renamed
        description = super()._get_train_description(current_epoch)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs < 0:
            description = description.replace(f"/{max_epochs - 1}", "")
        return description


class Trainer(pl.Trainer):
    """Lightning's Trainer, whose ``precision`` also takes ``auto`` (see :mod:`lit_idpo.trainer`)."""

    def __init__(self, *, precision: Optional[Union[_PRECISION_INPUT, Literal["auto"]]] = None, **kwargs):
        """
        Args:
            precision: ``auto``: ``bf16-mixed`` where the device multiplies natively in bf16 (a CUDA GPU
                with bf16; a CPU with AVX512-BF16 or AMX, read from its flags), ``32-true`` elsewhere; the
                choice and its reason are logged. Or one of Lightning's: ``32-true``, ``bf16-mixed``,
                ``bf16-true`` (warned: its 16-bit weights lose small updates), ``16-mixed``, ``64-true`` (an
                explicit value is always used as given). Unset:
                32-true, Lightning's default (bf16-mixed trained measurably worse DPO models in issue 20's
                study). Under ``*-mixed`` the fused LM head takes its bf16 path.
        """
        if precision is None:
            precision = DEFAULT_PRECISION
        quiet_lightning()
        callbacks = kwargs.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if (_RICH_AVAILABLE and kwargs.get("enable_progress_bar") is not False
                and not any(isinstance(c, ProgressBar) for c in callbacks)):
            kwargs["callbacks"] = callbacks + [StepsProgressBar()]  # what Lightning would add, minus "Epoch 0/-2"
        super().__init__(precision=resolve_precision(precision, kwargs.get("accelerator", "auto")), **kwargs)
