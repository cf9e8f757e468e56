"""Layer numbers, one convention everywhere (training, evaluation, sweeps, speculate).

A layer is the output of decoder block ``l``, numbered 1..L; L, the final layer, is the model's normal output.
Negative numbers count from the end: -1 is L. :func:`resolve_layers` maps and checks them;
:func:`default_intermediate_layer` is the paper's depth (layer 22 of 32); :func:`select_layers` reads a
command's layer choice (``auto``, ``all``, a list, or the command line's ``10,20``).
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Union

from lit_idpo.errors import ConfigError

__all__ = ["PAPER_RELATIVE_LAYER", "default_intermediate_layer", "parse_layer_list", "resolve_layers",
           "select_layers"]

PAPER_RELATIVE_LAYER = 22 / 32  # the paper's headline: layer 22 of a 32-layer model


def default_intermediate_layer(num_layers: int) -> int:
    """The intermediate layer at the paper's relative depth, round(L * 22/32), kept inside 1..L-1."""
    return max(1, min(num_layers - 1, round(num_layers * PAPER_RELATIVE_LAYER)))


def resolve_layers(layers: Sequence[int], num_layers: int) -> List[int]:
    """Map layer numbers (1..L, or negative from the end: -1 is L) to 1..L, checking the range (ValueError)."""
    resolved = []
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ValueError(f"layers: {layer!r} is not an integer layer number.")
        absolute = layer + num_layers + 1 if layer < 0 else layer
        if not 1 <= absolute <= num_layers:
            raise ValueError(
                f"layers: {layer} is out of range for a model with {num_layers} decoder blocks; use 1..{num_layers} "
                f"(the output of that block; {num_layers} is the final layer) or -1..-{num_layers} from the end."
            )
        resolved.append(absolute)
    return resolved


def parse_layer_list(text: str, option: str) -> List[int]:
    """The command line's ``"10,20,-1"`` as ``[10, 20, -1]``; a ConfigError naming ``option`` otherwise."""
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ConfigError(f"{option}={text!r}; use auto, all, or layer numbers such as 10,20,-1 (a list "
                          f"[10, 20, -1] in a config file)") from None


def select_layers(layers: Union[str, Sequence[int]], num_layers: int, option: str,
                  auto: Callable[[int], Sequence[int]], allow_empty: bool = False) -> List[int]:
    """Sorted layers 1..L, without repeats, from ``auto`` (``auto(L)``), ``all``, a list or the text ``10,20``."""
    if layers == "auto":
        return sorted(set(auto(num_layers)))
    if layers == "all":
        return list(range(1, num_layers + 1))
    if isinstance(layers, str):
        layers = parse_layer_list(layers, option)
    if not layers and not allow_empty:
        raise ConfigError(f"{option} is empty; give auto, all, or layer numbers such as 10,20")
    try:
        return sorted(set(resolve_layers(list(layers), num_layers)))
    except ValueError as err:
        message = str(err)
        raise ConfigError(option + message[len("layers"):] if message.startswith("layers") else message) from None
