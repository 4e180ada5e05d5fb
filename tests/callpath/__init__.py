"""Tests of the call path: registrar, authentication, B2BUA relay, failover, CDRs, inbound."""
