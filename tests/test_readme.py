"""Every ```python block of README.md runs, and so does each file in examples/: the user-facing
code cannot rot. A block may import torchvision or transformers (test dependencies); it is skipped
only where that package is not installed."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
OPTIONAL = ("torchvision", "transformers")


def _blocks() -> list[tuple[int, str]]:
    text = (ROOT / "README.md").read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def _skip_without_optional(code: str) -> None:
    for name in OPTIONAL:
        if re.search(rf"^\s*(import|from) {name}\b", code, re.M) and importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")


def test_readme_has_python_blocks():
    assert len(_blocks()) >= 2


@pytest.mark.parametrize(("line", "code"), _blocks(), ids=[f"README.md:{line}" for line, _ in _blocks()])
def test_readme_block_runs(line: int, code: str):
    _skip_without_optional(code)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own code


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_example_runs(path: pathlib.Path):
    _skip_without_optional(path.read_text())
    done = subprocess.run([sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
