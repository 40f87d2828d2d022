"""`make bench`: load the real stack through the Envoy edge and report."""
