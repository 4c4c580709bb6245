"""The wheel is what users get: build it from the repository, install it into a clean virtual
environment with nothing else, and check that the package, the Rust extension and the Triton
kernels all ship and import (without torch: `import fbdl_fast` must stay light)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Building the wheel needs maturin (a dev extra) and a Rust toolchain; a machine that only received
# the built wheel (the lent GPU machine) has neither, and its tests run against that wheel instead.
_MISSING = [
    name
    for name, found in (
        ("maturin", importlib.util.find_spec("maturin") is not None),
        ("cargo", shutil.which("cargo") is not None),
    )
    if not found
]
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"building the wheel needs {' and '.join(_MISSING)}, absent here "
    "(pip install -e '.[dev]' and a Rust toolchain)",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--quiet", "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.whl")
    return built


@pytest.mark.slow
def test_wheel_is_abi3_and_ships_kernels_stub_and_marker(wheel: Path) -> None:
    assert "-cp39-abi3-" in wheel.name, wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "fbdl_fast/__init__.py",
        "fbdl_fast/kernels/__init__.py",
        "fbdl_fast/py.typed",
        "fbdl_fast/_tokenizer.pyi",
    ):
        assert expected in names, f"{expected} missing from {wheel.name}"
    assert any(n.startswith("fbdl_fast/_tokenizer.") and n.endswith(".so") for n in names)
    assert not any(n.startswith("kernels/") for n in names), "kernels must ship inside fbdl_fast"


@pytest.mark.slow
def test_wheel_imports_in_a_clean_virtualenv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import sys, fbdl_fast, fbdl_fast._tokenizer, fbdl_fast.kernels; "
        "print(fbdl_fast.__version__, fbdl_fast._tokenizer.__version__, "
        "'torch' in sys.modules, fbdl_fast.__file__)"
    )
    result = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    version, rust_version, torch_loaded, location = result.stdout.split()
    assert version == rust_version
    assert torch_loaded == "False"
    assert location.startswith(str(env_dir)), location
