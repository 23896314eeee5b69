"""Shared prompt machinery: prompt strings with learnable slots, and deep text prompt tokens."""

from medzsad.prompts.slots import PromptSlots, init_context, init_deep_prompts, placeholder_prompt

__all__ = ["PromptSlots", "init_context", "init_deep_prompts", "placeholder_prompt"]
