"""Pure policy decisions for dialgate: no sockets, no clock reads, no imports from gateway."""
