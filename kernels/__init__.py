"""Fused LM-head log-prob kernels (installed as ``lit_idpo.kernels``).

Public API: :func:`linear_logprobs` and its :class:`LinearLogprobsOptions`. Imports only torch (triton
on first use of that backend). Design notes: docs/kernels.md.
"""


def _hand_over_global_name(name: str) -> None:
    """Replace this folder, imported under the global name ``name``, by the package that owns the name.

    That happens when the checkout's root is on ``sys.path`` (``python -m ...``, ``python -c`` or
    ``pytest`` started from the root). ``kernels`` belongs to Hugging Face's kernel-hub package, which
    transformers imports; standing in for it breaks transformers. The import system returns whatever
    ``sys.modules[name]`` holds once this file has run, so the owner is loaded there, found on the
    path without the checkout's root; when it is not installed, the import fails as if this folder
    were not there.
    """
    import sys
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec
    from pathlib import Path

    checkout_root = Path(__file__).resolve().parent.parent
    other_entries = [entry for entry in sys.path if Path(entry or ".").resolve() != checkout_root]
    spec = PathFinder.find_spec(name, other_entries)
    if spec is None or spec.loader is None:
        del sys.modules[name]
        raise ModuleNotFoundError(f"No module named {name!r} (the folder {checkout_root / 'kernels'} is "
                                  f"lit-idpo's, imported as lit_idpo.kernels)", name=name)
    owner = module_from_spec(spec)
    sys.modules[name] = owner
    spec.loader.exec_module(owner)


if __name__ == "kernels":
    _hand_over_global_name(__name__)
else:
    from .linear_logprobs import BACKENDS, LinearLogprobsOptions, linear_logprobs, naive_linear_logprobs

    __all__ = ["BACKENDS", "LinearLogprobsOptions", "linear_logprobs", "naive_linear_logprobs"]
