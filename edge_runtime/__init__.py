"""clawd-edge: a small llama.cpp runtime for 2-core / 2 GB edge boards."""
from __future__ import annotations

__version__ = "0.1.0"
