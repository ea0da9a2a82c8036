"""Reference potentials that generate training labels (see docs/reference-potential.md)."""
