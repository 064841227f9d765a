"""The package as installed: its version agrees with the library it loaded
and with pyproject.toml, and in CI the compiled fast path of the drop-ins
was built (without it the drop-ins still work, through ctypes, so its
absence would otherwise go unnoticed)."""
import os
import pathlib
import re

import pytest

import gclip


def test_package_and_library_versions_agree():
    assert gclip.library_version == gclip.__version__, (
        f"the Python package says {gclip.__version__}, the library it loaded says "
        f"{gclip.library_version}")


def test_pyproject_version_is_the_package_version():
    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip(f"no {pyproject} beside the tests")
    m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
    assert m, f"no version line in {pyproject}"
    assert m.group(1) == gclip.__version__


@pytest.mark.skipif(os.environ.get("CI") != "true",
                    reason="checked in CI (CI=true), whose set-up installs the Python headers")
def test_torch_fast_path_is_built_in_ci():
    import gclip.torch as gt
    assert gt._torch_fast is not None, (
        "gclip._torch_fast was not built, or for another PyTorch: the drop-ins run through "
        "ctypes only (were the Python headers or a C++ compiler missing when the package was "
        "built?)")


def test_the_cpp_scan_is_used_only_with_the_pytorch_it_was_built_against():
    """gclip._torch_fast records the PyTorch version of its build; gclip.torch
    drops it (the Python scan takes over) when another version is imported."""
    import importlib
    import torch
    fast = pytest.importorskip("gclip._torch_fast")
    assert fast.TORCH_VERSION == torch.__version__
    import gclip.torch as gt
    assert gt._torch_fast is fast
    real = torch.__version__
    try:
        torch.__version__ = real + "+other"
        other = importlib.reload(gt)
        assert other._torch_fast is None
        p = torch.nn.Parameter(torch.ones(4))
        p.grad = torch.full((4,), 3.0)
        torch.testing.assert_close(other.clip_grad_norm_([p], 1.0), torch.tensor(6.0))
        torch.testing.assert_close(p.grad, torch.full((4,), 3.0 / (6.0 + 1e-6)))
    finally:
        torch.__version__ = real
        importlib.reload(gt)
    assert gt._torch_fast is fast


# What tests/python_env.sh installs and the suite compares against; each is
# importorskip'd where it is used, so a broken install would only skip.
_REFERENCES = ("torch", "numpy", "jax", "optax", "zclip", "autoclip.torch",
               "pytorch_optimizer", "timm.utils.agc")


@pytest.mark.skipif(os.environ.get("CI") != "true",
                    reason="checked in CI (CI=true), whose set-up installs every reference")
@pytest.mark.parametrize("name", _REFERENCES)
def test_reference_packages_import_in_ci(name):
    import importlib
    importlib.import_module(name)
