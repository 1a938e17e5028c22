"""`python -m edge_runtime` runs the clawd-edge CLI."""
from .cli import main

main()
