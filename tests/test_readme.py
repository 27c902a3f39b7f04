"""CI proves the README: .ci/run must run the README's test command, verbatim."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    i = next(n for n, line in enumerate(readme) if line.startswith("# 2. the tests"))
    command = readme[i + 1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines()
    assert any(line.strip().endswith("sdlens demo --out demo-out") for line in readme[:i])
