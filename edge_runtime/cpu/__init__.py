"""Which CPU this is, which llama.cpp build is installed, and whether the one can run the other (stdlib only)."""
