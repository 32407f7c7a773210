"""lookahead_conformance: certify a backend against eq. 0.1 and the reference."""
