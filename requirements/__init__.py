"""The lock files and the check that keeps them, pyproject.toml and the venv in step (see the Makefile)."""
