"""The import rule is enforced, not only written: the contracts in pyproject.toml hold for the project, and the
same contracts reject an upward import and a cycle (so a kept contract means something)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_project_keeps_its_layer_and_acyclic_contracts() -> None:
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


def test_contracts_reject_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    packages = {"feature_store": {"a.py": "from training import t\n", "b.py": "from feature_store import c\n",
                                  "c.py": "from feature_store import b\n"},
                "training": {"t.py": ""}, "serving": {"s.py": ""}, "analytics": {"an.py": ""},
                "privacy": {"p.py": ""}, "recforge": {"r.py": ""}}
    for package, modules in packages.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        for name, text in modules.items():
            (tmp_path / package / name).write_text(text)
    doc = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(doc[doc.index("[tool.importlinter]"):])
    out = _lint(tmp_path)
    assert out.returncode == 1
    assert "feature_store.a -> training.t" in out.stdout
    assert "No cycles are allowed in feature_store" in out.stdout
