"""Usage metering, imported directly: the one token estimate, explicit figures, streams."""

from __future__ import annotations

import pytest

from extproc import ir
from extproc.decisions.usage import UsageMeter, estimate_tokens


@pytest.mark.parametrize(("size", "tokens"), [(0, 1), (3, 1), (4, 1), (7, 1), (8, 2), (401, 100)])
def test_a_body_is_about_four_bytes_a_token_and_at_least_one(size: int, tokens: int) -> None:
    assert estimate_tokens(size) == tokens


def test_without_figures_the_meter_charges_the_estimates() -> None:
    meter = UsageMeter()
    meter.estimate_input(400)
    assert meter.explicit is False
    assert meter.usage() == ir.Usage(input_tokens=100, output_tokens=0)
    meter.observe_events([ir.TextDelta("Hello"), ir.ToolCallDelta(0, '{"a":1}')])
    # 12 characters produced: 3 tokens; one more starts a fourth (a started token counts).
    assert meter.usage() == ir.Usage(input_tokens=100, output_tokens=3)
    meter.observe_events([ir.TextDelta("!")])
    assert meter.usage().output_tokens == 4
    assert meter.total() == 104


def test_explicit_figures_win_over_estimates() -> None:
    meter = UsageMeter()
    meter.estimate_input(4000)
    meter.observe_events([ir.TextDelta("x" * 400)])
    meter.observe_usage(ir.Usage(input_tokens=7, output_tokens=3, cached_tokens=2))
    assert meter.explicit is True
    assert meter.usage() == ir.Usage(input_tokens=7, output_tokens=3, cached_tokens=2)
    assert meter.total() == 10


def test_a_reported_zero_is_a_figure_too() -> None:
    meter = UsageMeter()
    meter.estimate_input(4000)
    meter.observe_usage(ir.Usage(output_tokens=9))
    assert meter.usage() == ir.Usage(input_tokens=0, output_tokens=9)


def test_cumulative_figures_keep_the_largest_seen_per_field() -> None:
    meter = UsageMeter()
    meter.observe_events(
        [
            ir.StreamUsage(ir.Usage(input_tokens=20, output_tokens=1, cached_tokens=5)),
            ir.TextDelta("more"),
            ir.StreamUsage(ir.Usage(input_tokens=0, output_tokens=30)),
        ]
    )
    assert meter.usage() == ir.Usage(input_tokens=20, output_tokens=30, cached_tokens=5)


def test_no_usage_is_no_figure() -> None:
    meter = UsageMeter()
    meter.observe_usage(None)
    meter.observe_events([ir.StreamStart("id", "m"), ir.StreamFinish("stop")])
    assert meter.explicit is False
    assert meter.usage() == ir.Usage(input_tokens=0, output_tokens=0)


def test_a_cut_stream_charges_what_was_produced_beyond_an_early_figure() -> None:
    meter = UsageMeter()
    # Anthropic's message_start: the input, and 1 output token so far
    meter.observe_events([ir.StreamUsage(ir.Usage(input_tokens=20, output_tokens=1))])
    meter.observe_events([ir.TextDelta("x" * 40)])
    assert meter.usage() == ir.Usage(input_tokens=20, output_tokens=1)
    assert meter.usage(cut=True) == ir.Usage(input_tokens=20, output_tokens=10)
    meter.observe_usage(ir.Usage(input_tokens=20, output_tokens=12))
    assert meter.usage(cut=True).output_tokens == 12  # a larger figure still wins
