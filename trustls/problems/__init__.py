"""Test problem collections: NIST StRD, Moré-Garbow-Hillstrom, bundle adjustment."""
