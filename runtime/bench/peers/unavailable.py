"""The exception of a peer configuration that cannot run here."""


class PeerUnavailable(Exception):
    """A peer configuration cannot run here; the message is the reason shown in the table."""
