"""The shape of the package: the import-linter contracts of pyproject.toml (layers, no cycles) hold, and
`import dinolab` / the CLI's start import nothing heavy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.fail("lint-imports not found next to the interpreter: install the test extra (pip install -e '.[test]')")
    done = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("statement", ["import dinolab", "import dinolab.cli; dinolab.cli.build_parser()"])
def test_starting_up_imports_nothing_heavy(statement: str) -> None:
    heavy = ("matplotlib", "scipy", "sklearn", "faiss", "onnx", "onnxruntime", "torch.utils.tensorboard")
    code = f"{statement}; import sys; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"{statement!r} imported {done.stdout.strip()}"
