"""The checkout never stands in for another package's import name, however Python is started.

The top-level ``kernels/`` folder is installed as ``lit_idpo.kernels``; the global name ``kernels`` is
Hugging Face's kernel-hub package, which transformers imports. Whenever the checkout's root is on
``sys.path`` (``python -m ...``, ``python -c`` or pytest started from the root, and every sweep child
started from there), ``import kernels`` must still get that package, or fail when it is not installed.
Each check runs in a fresh interpreter with the checkout's root as its working directory.
"""

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUR_FOLDER = ROOT / "kernels"


def _python(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _hub_kernels_installed() -> bool:
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_import_kernels_from_the_root_never_gets_this_folder():
    probe = "import kernels, pathlib; print(pathlib.Path(kernels.__file__).resolve())"
    result = _python("-c", probe)
    if not _hub_kernels_installed():
        assert result.returncode != 0 and "No module named 'kernels'" in result.stderr, result.stderr
        return
    assert result.returncode == 0, result.stderr
    loaded = Path(result.stdout.strip())
    assert OUR_FOLDER not in loaded.parents, loaded
    owner_files = importlib.metadata.distribution("kernels").files
    owner_init = next(f for f in owner_files if str(f).replace("\\", "/") == "kernels/__init__.py")
    assert loaded == Path(owner_init.locate()).resolve()


def test_transformers_hub_kernel_integration_imports_from_the_root():
    # The import that failed with "cannot import name 'CUDAProperties' from 'kernels'" under transformers 5.25.
    result = _python("-c", "import transformers.integrations.hub_kernels as h; print('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_without_the_owner_installed_the_import_fails_as_if_the_folder_were_absent():
    # -S: no site-packages, so Hugging Face's package is out of reach; the root is still on the path.
    result = _python("-S", "-c", "import kernels")
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'kernels'" in result.stderr, result.stderr
    result = _python("-S", "-c", "import sys\ntry:\n    import kernels\nexcept ImportError:\n    pass\n"
                                 "print('kernels' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr  # no half-imported module is left behind


def test_fit_from_the_root_with_python_dash_m(tmp_path):
    result = _python("-m", "lit_idpo.cli", "fit", "--config", "configs/tiny.yaml", "--trainer.max_steps", "1",
                     "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "hf_model" / "config.json").is_file()


@pytest.mark.slow  # two tiny trainings in child processes: about a minute on 2 cores
def test_a_sweep_started_from_the_root_trains_its_children(tmp_path):
    spec = {"base_config": str(ROOT / "configs" / "tiny.yaml"), "output_dir": str(tmp_path / "out"),
            "baselines": {"dpo": True, "sft": False}, "settings": [{"layers": [1], "name": "L1"}],
            "fit": {"trainer": {"max_steps": 1, "val_check_interval": 1, "limit_val_batches": 1}}}
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    result = _python("-m", "lit_idpo.cli", "sweep", "--config", str(sweep_file), "--train_only",
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("dpo", "L1"):
        assert "lit-idpo: fit finished" in (tmp_path / "out" / "runs" / name / "fit.log").read_text()


@pytest.mark.slow  # builds the wheel: about 10 s
def test_a_wheel_installs_the_kernels_as_lit_idpo_kernels_only(tmp_path):
    build = _python("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT),
                    cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("lit_idpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lit_idpo/kernels/__init__.py" in names and "lit_idpo/kernels/linear_logprobs.py" in names
    assert not [n for n in names if n.startswith("kernels/")], "the wheel claims the global name 'kernels'"

    target = tmp_path / "site"
    install = _python("-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel), cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    # From the root, with the wheel's lit_idpo ahead of the checkout's: the installed op works, the global
    # name is still the owner's (or absent), and neither import loads a framework.
    probe = (f"import sys; sys.path.insert(0, {str(target)!r})\n"
             "import lit_idpo.kernels as k, pathlib\n"
             f"assert pathlib.Path(k.__file__).is_relative_to({str(target)!r}), k.__file__\n"
             "assert callable(k.linear_logprobs)\n"
             "assert not [m for m in sys.modules if m.split('.')[0] in ('lightning', 'transformers')]\n"
             "try:\n    import kernels\nexcept ImportError:\n    print('absent')\n"
             "else:\n    print(pathlib.Path(kernels.__file__).resolve())\n")
    result = _python("-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = result.stdout.strip()
    if _hub_kernels_installed():
        assert OUR_FOLDER not in Path(shown).parents, shown
    else:
        assert shown == "absent"
