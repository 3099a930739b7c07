"""Benchmark reports name the commit they measured, also when run from outside the checkout."""

import subprocess
from pathlib import Path

import pytest

import dreamfusion
from dreamfusion.bench.provenance import git_commit


def test_commit_override_from_the_environment(monkeypatch):
    monkeypatch.setenv("DREAMFUSION_COMMIT", "abc1234")
    assert git_commit() == "abc1234"


def test_commit_is_the_package_checkout_head_from_any_directory(monkeypatch, tmp_path):
    package = Path(dreamfusion.__file__).resolve().parent
    git = ["git", "rev-parse", "--short", "HEAD"]
    head = subprocess.run(git, cwd=package, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the package does not run from a git checkout here")
    monkeypatch.delenv("DREAMFUSION_COMMIT", raising=False)
    monkeypatch.chdir(tmp_path)  # not a repository: the package's own checkout is asked
    commit = git_commit()
    assert commit.removesuffix("+dirty") == head.stdout.strip()
