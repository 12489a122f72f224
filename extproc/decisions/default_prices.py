"""The bundled price table: US dollars per 1M tokens of well-known models, by provider type.

Data only. Figures are the providers' published standard-tier list prices (late 2025:
platform.openai.com/docs/pricing, docs.anthropic.com/en/docs/about-claude/pricing,
ai.google.dev/gemini-api/docs/pricing); long-context tiers, batch and priority tiers are
not modelled. Prices change: `pricing` in the config overrides any entry, and entries
for models not listed here. Anthropic's cache_write is the 5-minute cache write
(1.25x input). `ollama/*` is local, so free.
"""

from __future__ import annotations

from extproc.config.settings import Price

DEFAULT_PRICES: dict[str, Price] = {
    # OpenAI (azure_openai deployments of these models are priced the same by default)
    "openai/gpt-5": Price(input=1.25, output=10.00, cached_input=0.125),
    "openai/gpt-5-mini": Price(input=0.25, output=2.00, cached_input=0.025),
    "openai/gpt-5-nano": Price(input=0.05, output=0.40, cached_input=0.005),
    "openai/gpt-4.1": Price(input=2.00, output=8.00, cached_input=0.50),
    "openai/gpt-4.1-mini": Price(input=0.40, output=1.60, cached_input=0.10),
    "openai/gpt-4.1-nano": Price(input=0.10, output=0.40, cached_input=0.025),
    "openai/gpt-4o": Price(input=2.50, output=10.00, cached_input=1.25),
    "openai/gpt-4o-mini": Price(input=0.15, output=0.60, cached_input=0.075),
    "openai/o3": Price(input=2.00, output=8.00, cached_input=0.50),
    "openai/o3-mini": Price(input=1.10, output=4.40, cached_input=0.55),
    "openai/o4-mini": Price(input=1.10, output=4.40, cached_input=0.275),
    "openai/text-embedding-3-small": Price(input=0.02),
    "openai/text-embedding-3-large": Price(input=0.13),
    # Anthropic
    "anthropic/claude-opus-4-5": Price(
        input=5.00, output=25.00, cached_input=0.50, cache_write=6.25
    ),
    "anthropic/claude-opus-4-1": Price(
        input=15.00, output=75.00, cached_input=1.50, cache_write=18.75
    ),
    "anthropic/claude-opus-4": Price(
        input=15.00, output=75.00, cached_input=1.50, cache_write=18.75
    ),
    "anthropic/claude-sonnet-4-5": Price(
        input=3.00, output=15.00, cached_input=0.30, cache_write=3.75
    ),
    "anthropic/claude-sonnet-4": Price(
        input=3.00, output=15.00, cached_input=0.30, cache_write=3.75
    ),
    "anthropic/claude-haiku-4-5": Price(
        input=1.00, output=5.00, cached_input=0.10, cache_write=1.25
    ),
    "anthropic/claude-3-5-haiku": Price(
        input=0.80, output=4.00, cached_input=0.08, cache_write=1.00
    ),
    # Google Gemini (prompts up to 200k tokens)
    "gemini/gemini-2.5-pro": Price(input=1.25, output=10.00, cached_input=0.125),
    "gemini/gemini-2.5-flash": Price(input=0.30, output=2.50, cached_input=0.03),
    "gemini/gemini-2.5-flash-lite": Price(input=0.10, output=0.40, cached_input=0.01),
    "gemini/gemini-2.0-flash": Price(input=0.10, output=0.40, cached_input=0.025),
    "gemini/gemini-2.0-flash-lite": Price(input=0.075, output=0.30),
    "gemini/text-embedding-004": Price(input=0.0),
    # Ollama runs on your own machines
    "ollama/*": Price(input=0.0, output=0.0),
}
