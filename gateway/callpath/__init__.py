"""The call path: request router, digest auth, registrar, inbound routing, the B2BUA, CDRs."""
