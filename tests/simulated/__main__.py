"""`python -m tests.simulated --port N [--chunks 20]`: run the simulator standalone."""

from __future__ import annotations

import argparse
import asyncio

from tests.simulated.scenario import Scenario, SimState
from tests.simulated.server import start_site


async def _serve(args: argparse.Namespace) -> None:
    state = SimState(scenario=Scenario(chunks=args.chunks, chunk_delay=args.chunk_delay))
    runner, port = await start_site(state, args.host, args.port)
    print(f"simulated providers listening on http://{args.host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.simulated", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=0, help="0 picks a free port (printed on start)"
    )
    parser.add_argument("--chunks", type=int, default=5, help="text chunks per streamed reply")
    parser.add_argument(
        "--chunk-delay", type=float, default=0.0, help="seconds between streamed frames"
    )
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
