"""The documentation that is generated or that users read."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_tables_are_generated_from_the_results():
    """docs/benchmarks.md and the README's results block equal what benchmarks/report.py
    makes of benchmarks/results/*.json (nobody typed the numbers)."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_user_docs_stay_inside_the_repository():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(files) >= 5
    for f in files:
        text = f.read_text()
        assert "../shared" not in text and "shared/" not in text, f
        for link in re.findall(r"\]\(([^)#]+)\)", text):  # relative links resolve
            if "://" not in link:
                assert (f.parent / link).exists(), (f, link)


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_report_paths_read_dotted_keys_and_list_indices():
    """benchmarks/report.py's path reader (in a child process: loading the benchmark
    scripts' folder here would leave state behind for later tests)."""
    code = """
import report
get = report._get
data = {"coverage": {"r3": {"0.683": 0.7}}, "rounds": [{"f": 1.0}, {"f": 0.25}]}
assert get(data, "coverage.r3.0.683") == 0.7
assert get(data, "rounds.-1.f") == 0.25 and get(data, "rounds.0.f") == 1.0
assert get(data, "rounds.2.f") is None and get(data, "rounds.x") is None
assert get(data, "coverage.r4") is None
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks",
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
