"""Token counting: offline encodings, exact chat accounting, one counting interface."""
