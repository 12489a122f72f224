"""Simulated upstream LLM providers for tests and benchmarks.

One aiohttp server speaks OpenAI, Azure OpenAI, Anthropic, Gemini and Ollama
on one port, faithful to each documented wire format, with scripted replies,
fault injection and request recording. Start it with ``SimulatedProviders``
(in-process, background thread) or ``python -m tests.simulated`` (standalone,
driven through ``ControlClient`` / ``/__control/...``).
"""

from tests.simulated.control import ControlClient
from tests.simulated.harness import SimulatedProviders
from tests.simulated.scenario import FAULT_NAMES, PROVIDERS, Fault, RecordedRequest, Scenario, Usage

__all__ = [
    "FAULT_NAMES",
    "PROVIDERS",
    "ControlClient",
    "Fault",
    "RecordedRequest",
    "Scenario",
    "SimulatedProviders",
    "Usage",
]
