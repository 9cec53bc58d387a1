"""The unprivileged HTTP frontend: authenticates tokens, validates requests, forwards them.

It never imports lxc and never writes the token store; everything it does as root it asks of
the helper, which checks again.
"""
