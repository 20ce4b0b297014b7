"""Passive device fingerprinting: one parser per signal, from sampled frame bytes.

Every parser takes a decoded frame (fingerprint.frame.Frame) and returns
Observations about its source or destination device. Parsers never raise on
hostile bytes: fingerprint.registry counts a parser that fails and drops its
result.
"""
