"""Browser tests of the web panel (issue #15): headless Debian chromium through selenium."""
