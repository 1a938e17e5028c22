"""Inference engine: continuous batching over one llama.cpp context (llama_cpp itself loads lazily)."""
from .llama import LlamaEngine, create_engine
from .planner import MemoryPlan, plan_for

__all__ = ["LlamaEngine", "MemoryPlan", "create_engine", "plan_for"]
