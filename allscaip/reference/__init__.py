"""Reference potentials that generate training labels (see shared REFERENCE-POTENTIAL notes)."""
