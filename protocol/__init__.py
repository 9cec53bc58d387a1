"""The contract between the frontend and the root helper: every operation, error code and rule.

Both sides import this package and nothing of each other; it never imports lxc or aiohttp.
"""

# The package's version: pyproject.toml and debian/changelog say the same (tests/test_doctor.py).
VERSION = "0.1.0"
