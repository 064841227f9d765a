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


# ---- the examples check what they show ---------------------------------------------

_EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"


def _run_example(source: str, name: str, *args: str, tmp_path):
    import subprocess
    import sys
    script = tmp_path / name
    script.write_text(source)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)


@pytest.mark.parametrize("name, args, change", [
    # the update applied whatever the flag: the bad step writes Inf into the weights
    ("skip_nonfinite_step.py", (), ('keep = res["nonfinite"] == 0', "keep = torch.tensor(True)")),
    # the gclip run not clipped: its loss overflows as the unclipped run's does
    ("lstm_clipping.py", ("--steps", "60", "--out", "", "--print-every", "100"),
     ("gt.clip_grad_norm_(model.parameters(), args.max_norm)",
      "gt.clip_grad_norm_(model.parameters(), 1e30)")),
])
def test_examples_pass_and_fail_when_what_they_show_is_broken(name, args, change, tmp_path):
    """Each Python example exits 0 as it is, and 1 with the one line it
    demonstrates broken: its checks can fail."""
    path = _EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"no {path} beside the tests")
    source = path.read_text()
    good = _run_example(source, name, *args, tmp_path=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert source.count(change[0]) == 1
    bad = _run_example(source.replace(change[0], change[1]), name, *args, tmp_path=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAILED" in bad.stdout


def test_lstm_example_refuses_bad_arguments(tmp_path):
    path = _EXAMPLES / "lstm_clipping.py"
    if not path.is_file():
        pytest.skip(f"no {path} beside the tests")
    for args in (("--steps", "0"), ("--print-every", "0"), ("--length", "1"),
                 ("--max-norm", "0")):
        r = _run_example(path.read_text(), "lstm_clipping.py", *args, tmp_path=tmp_path)
        assert r.returncode == 2 and "error: --" in r.stderr, (args, r.stderr)
