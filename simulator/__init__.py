"""SIP peers for tests and campaign rehearsal, built on gateway.sip."""
