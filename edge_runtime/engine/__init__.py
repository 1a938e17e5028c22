"""Inference engine: continuous batching over one llama.cpp context."""
