"""What an evaluation reads and how it generates: data, generation and implicit-reward options, model specs.

These dataclasses are also the ``lit-idpo evaluate`` command line (``--data.limit``,
``--generation.max_new_tokens``, ...): their docstrings are its ``--help`` text. Bad values raise
:class:`lit_idpo.errors.ConfigError` naming the option and the fix.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from lit_idpo.errors import ConfigError
from lit_idpo.layers import parse_layer_list

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class DataOptions:
    """Where the prompts come from: the held-out split of a preference data source.

    Args:
        source: as the data module's ``source``: ``bundled:arithmetic``, a Hub dataset id, a local
            directory, a ``datasets`` builder name with ``data_files``, or one local file.
        split: the held-out split (``test`` for ``bundled:arithmetic``, ``test_prefs`` for UltraFeedback).
        data_files: as the data module's ``data_files`` (a file, a list, or split -> files).
        subset: the dataset configuration name, if it has several.
        format: ``auto``, ``standard``, ``conversational`` or ``implicit`` (see :mod:`lit_idpo.data`).
        limit: keep only the first this-many usable prompts (null: all).
        on_bad_row: ``error`` stops at the first unusable row, naming it; ``skip`` skips and counts them.
    """

    source: str = "bundled:arithmetic"
    split: str = "test"
    data_files: Optional[Any] = None
    subset: Optional[str] = None
    format: str = "auto"
    limit: Optional[int] = None
    on_bad_row: str = "error"

    def __post_init__(self):
        if self.limit is not None and (not isinstance(self.limit, int) or isinstance(self.limit, bool)
                                       or self.limit < 1):
            raise ConfigError(f"data.limit={self.limit!r}; it must be an integer >= 1 (or null for every prompt)")
        if self.on_bad_row not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_row={self.on_bad_row!r}; choose 'error' or 'skip'")
        formats = ("auto", "standard", "conversational", "implicit")
        if self.format not in formats:
            raise ConfigError(f"data.format={self.format!r}; choose one of {', '.join(formats)}")


@dataclass
class GenerationOptions:
    """How responses are generated (always from the final layer). The model's own ``generation_config``
    defaults (its sampling settings, repetition penalty, ...) are not used: only these settings apply.

    Args:
        max_new_tokens: longest response in tokens (a response that reaches it is marked ``length``).
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature (only with ``do_sample``).
        top_p: nucleus sampling mass (only with ``do_sample``; 1.0 is off).
        top_k: sample among the top-k tokens (only with ``do_sample``; 0 is off).
        seed: sampling seed (each batch is seeded from it and its prompts).
        batch_size: prompts per ``generate`` call.
        max_prompt_length: longer prompts keep their last this-many tokens (and BOS); null: never cut.
        dtype: weights' dtype for generation (``float32``, ``bfloat16``, ``float16``).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    """

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: Optional[int] = None
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self):
        for name, least in (("max_new_tokens", 1), ("batch_size", 1), ("top_k", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"generation.{name}={value!r}; it must be an integer >= {least}")
        if self.max_prompt_length is not None and (not isinstance(self.max_prompt_length, int)
                                                   or self.max_prompt_length < 1):
            raise ConfigError(f"generation.max_prompt_length={self.max_prompt_length!r}; an integer >= 1, or null")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError(f"generation.temperature={self.temperature}; sampling needs a temperature > 0 "
                              f"(or turn do_sample off for greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"generation.top_p={self.top_p}; it must be in (0, 1]")
        if self.dtype not in DTYPES:
            raise ConfigError(f"generation.dtype={self.dtype!r}; choose one of {', '.join(DTYPES)}")

    def key_fields(self) -> Dict[str, Any]:
        """The settings that change what is generated (the cache key); sampling knobs only when sampling."""
        fields = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                  "max_prompt_length": self.max_prompt_length, "dtype": self.dtype}
        if self.do_sample:
            fields.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)
        return fields


@dataclass
class ImplicitOptions:
    """Implicit-reward accuracy per layer (no generation; needs ``reference``). Each model's log-probs
    are cached per model in ``cache_dir``, so an evaluation extended by more models scores only those.

    Args:
        layers: ``auto`` (8 evenly spaced layers ending with the final one), ``all``, or a list of layer
            numbers (1..L, or negative from the end; -1 is the final layer), also as text: ``5,21,-1``.
        beta: the DPO beta used for the reported reward margins (accuracy does not depend on it).
        batch_size: pairs per forward pass.
        max_length: pairs longer than this (prompt + longer completion, tokens) are dropped and counted.
        data: where the held-out pairs come from, when not from the prompts' ``data`` (e.g. the prompts are
            prompt-only rows, which have no pair): the same options as ``data``. null: the prompts' data.
    """

    layers: Union[str, List[int]] = "auto"
    beta: float = 0.1
    batch_size: int = 8
    max_length: Optional[int] = 1024
    data: Optional[DataOptions] = None

    def __post_init__(self):
        if isinstance(self.layers, str) and self.layers not in ("auto", "all"):
            self.layers = parse_layer_list(self.layers, "implicit.layers")  # the command line's "5,21,-1"
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"implicit.batch_size={self.batch_size!r}; it must be an integer >= 1")
        if isinstance(self.data, dict):  # a sweep file's plain mapping
            unknown = sorted(set(self.data) - {f.name for f in dataclasses.fields(DataOptions)})
            if unknown:
                raise ConfigError(f"implicit.data has unknown key(s) {unknown}; it takes the options of data")
            self.data = DataOptions(**self.data)


@dataclass
class ModelSpec:
    """A model to evaluate: a short ``name`` for reports and its ``source`` (see :mod:`lit_idpo.models`)."""

    name: str
    source: str


def _default_name(source: str) -> str:
    if source.startswith("embedded:"):
        return source.split(":", 1)[1]
    path = Path(source.rstrip("/\\"))
    parts = [p for p in path.parts if p not in ("/", "")]
    while len(parts) > 1 and parts[-1] in ("hf_model", "merged", "model"):
        parts.pop()
    return parts[-1] if parts else source


def parse_model_specs(items: Sequence[str]) -> List[ModelSpec]:
    """Parse ``NAME=SOURCE`` (or a bare ``SOURCE``, named after its last path part) and check names are unique."""
    specs: List[ModelSpec] = []
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.+\-]+", name):
            name, source = _default_name(item), item
        if not source:
            raise ConfigError(f"--model {item!r}: the source is empty; write NAME=SOURCE or SOURCE")
        specs.append(ModelSpec(name, source))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--model: the name(s) {duplicates} are used twice; name each model with NAME=SOURCE")
    return specs


def slug(name: str) -> str:
    """A model name made safe as a file name."""
    return re.sub(r"[^A-Za-z0-9_.+\-]", "_", name)
