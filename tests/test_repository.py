"""The repository itself: documents it refers to exist, and no machine-specific paths."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".cfg", ".txt", ".in", ".sh", ".csv", ""}
PATH_REFERENCE = re.compile(
    r"(?<![\w/.-])((?:docs|benchmarks|tools|models|plugins|protocols|tests|allscaip)/[\w./-]*\w\.(?:md|py|csv|yml|yaml|json|in))")
DOCUMENT_NAME = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_-]+\.md)\b")
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|root|Users|scratch)/\w")


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [REPO / name for name in names]
    return [f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file()
            and "fixtures" not in f.parts and f.stat().st_size < 2_000_000]


def test_referenced_repository_files_exist():
    basenames = {path.name for path in REPO.rglob("*.md") if ".venv" not in path.parts}
    missing = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        for reference in PATH_REFERENCE.findall(text):
            if not (REPO / reference).exists() and not (path.parent / reference).exists():
                missing.append(f"{path.relative_to(REPO)} -> {reference}")
        for name in DOCUMENT_NAME.findall(text):
            if name not in basenames:
                missing.append(f"{path.relative_to(REPO)} -> {name}")
    assert not missing, "dangling references:\n" + "\n".join(missing)


def test_no_machine_specific_paths():
    found = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not found, "machine paths:\n" + "\n".join(found)
