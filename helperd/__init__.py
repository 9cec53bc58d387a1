"""The root helper: the only process that touches liblxc, and the only writer of the token store.

It trusts nothing it is sent: every frame is decoded strictly, every request re-validated and
authorised here, whatever the frontend already checked.
"""
