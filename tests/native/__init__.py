"""Tests of the mypyc build of gateway/sip (scripts/build_native.py)."""
