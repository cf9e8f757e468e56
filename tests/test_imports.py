"""Import hygiene: the kernels stand alone, and the package imports its public names only on first use.

Each check runs in a fresh interpreter, since this test process has long since imported everything.
"""

import subprocess
import sys

import pytest

import lit_idpo

HEAVY = ("lightning", "pytorch_lightning", "transformers")


def _loaded_heavy_modules(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the heavy framework modules it left loaded."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return result.stdout.split()


@pytest.mark.parametrize("code", [
    "import lit_idpo.kernels",
    "from lit_idpo.kernels import linear_logprobs, LinearLogprobsOptions",
    "import lit_idpo",
    "from lit_idpo import linear_logprobs, LinearLogprobsOptions, __version__",
])
def test_kernels_and_bare_package_load_no_framework(code):
    assert _loaded_heavy_modules(code) == []


@pytest.mark.parametrize("code", [
    "import lit_idpo.logprobs",
    "from lit_idpo import sequence_logprobs",
    "import lit_idpo.batch, lit_idpo.layers",
])
def test_the_torch_level_api_loads_no_lightning(code):
    # The model side reads the batch contract (lit_idpo.batch), never data/ (whose datamodule is Lightning's).
    assert [m for m in _loaded_heavy_modules(code) if m.split(".")[0] in ("lightning", "pytorch_lightning")] == []


@pytest.mark.slow  # importing Lightning in a fresh interpreter: 5-15 s here
def test_a_name_that_needs_lightning_loads_it_on_first_use():
    # The probe itself: proves the check above can see Lightning when it is there.
    assert "lightning" in _loaded_heavy_modules("from lit_idpo import IntermediateDPO")


def test_every_public_name_resolves_to_its_defining_object():
    import lit_idpo.kernels
    import lit_idpo.logprobs
    import lit_idpo.losses
    import lit_idpo.module

    assert sorted(lit_idpo.__all__) == sorted(lit_idpo._EXPORTS) and len(lit_idpo.__all__) == 12
    for name in lit_idpo.__all__:
        assert getattr(lit_idpo, name) is not None, name
        assert name in dir(lit_idpo)
    assert lit_idpo.linear_logprobs is lit_idpo.kernels.linear_logprobs
    assert lit_idpo.sequence_logprobs is lit_idpo.logprobs.sequence_logprobs
    assert lit_idpo.preference_loss is lit_idpo.losses.preference_loss
    assert lit_idpo.IntermediateDPO is lit_idpo.module.IntermediateDPO
    assert isinstance(lit_idpo.__version__, str)


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        lit_idpo.not_a_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from lit_idpo import not_a_name", {})
