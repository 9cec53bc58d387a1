"""The contract between the frontend and the root helper: every operation, error code and rule.

Both sides import this package and nothing of each other; it never imports lxc or aiohttp.
"""
