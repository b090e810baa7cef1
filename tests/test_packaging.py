"""Our `datasets` folder and Hugging Face's `datasets` package never shadow each other."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, fake_site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(fake_site)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_ours_and_hugging_faces_datasets_coexist(tmp_path):
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("ORIGIN = 'huggingface'\n")
    code = (
        "import sys, runpy\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"          # as `python launch.py` puts the repository first
        f"runpy.run_path({str(REPO / 'launch.py')!r}, run_name='launch')\n"
        "import datasets\n"
        "from offline_sweeps.datasets import load\n"
        "import offline_sweeps.datasets as ours\n"
        "print(datasets.ORIGIN, load.__module__, ours.__file__)\n"
    )
    result = run_python(code, tmp_path / "site", cwd=REPO)
    assert result.returncode == 0, result.stderr
    origin, module, ours_file = result.stdout.split()
    assert origin == "huggingface"
    assert module == "offline_sweeps.datasets.loading"
    assert Path(ours_file).parent == REPO / "datasets"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    command = readme.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
    assert command.startswith("pip install") and command.endswith("&& pytest")
    completed = subprocess.run(["bash", "-c", "grep -A 3 '<!-- test-command -->' README.md | grep -m 1 '^pip install'"],
                               capture_output=True, text=True, cwd=REPO)
    assert completed.stdout.strip() == command
