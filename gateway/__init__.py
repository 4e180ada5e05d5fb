"""dialgate: SIP gateway for outbound call centers."""

__version__ = "0.1.0"
