"""llmux: an LLM gateway as an Envoy external processor."""
