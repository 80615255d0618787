"""The Python examples of docs/plugins.md run as written: each imports what it uses
(``hookimpl`` included) and registers components of the kinds it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_example_runs_and_registers(code):
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # a missing import is a NameError here
    hook = namespace.get("register_components")
    if hook is None:
        return
    assert "from cbdm_core import hookimpl" in code
    assert hasattr(hook, "cbdm_impl")  # marked by cbdm's pluggy marker, so pluggy calls it
    registered = []
    hook(register=lambda kind, name, obj, description="": registered.append((kind, name)))
    assert registered
