"""Shared pytest setup: markers used across the test files."""


def pytest_configure(config):
    """Register the ``browser`` marker: tests that run a real headless Chromium (select with -m browser)."""
    config.addinivalue_line("markers", "browser: runs a real headless Chromium on a generated page")
