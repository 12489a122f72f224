"""Coverage-guided fuzzing of every codec's parsers with atheris (not part of CI).

    pip install atheris
    python -m bench.fuzz_codecs --seconds 60            # each target, one after the other

Each target feeds fuzzer bytes to one decoder; anything but a result or ir.GatewayError
is a finding (atheris prints the input and stops that target). The seeds are the
request/response vectors in tests/vectors, so the fuzzer starts from real shapes, plus
client bodies nesting deep in free-form fields (tool schemas, unknown fields) for the
`client.*` targets (the router phase's nesting guard, then the codec).

The `transport.*` targets (tests/transport/fuzz_targets.py) feed the HTTP/2 frame
reader, the gRPC message reader and a whole lean-server connection over a fake
transport; they raise only on a finding (a foreign exception, or a crash the
connection logged), and start from a valid client conversation.

    python -m bench.fuzz_codecs --seconds 60 --only transport.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from pathlib import Path

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors"


def targets() -> dict[str, object]:
    from tests.transport.fuzz_targets import targets as transport_targets
    from tests.unit.test_codec_properties import DECODERS

    return {**DECODERS, **transport_targets()}


def seed_corpus(directory: Path, name: str) -> None:
    if name.startswith("transport."):  # HTTP/2 frames and gRPC messages, not JSON bodies
        from tests.transport.fuzz_targets import seeds

        bodies = seeds()
    else:
        from tests.unit.test_codec_properties import deep_bodies, vector_bodies

        bodies = [*vector_bodies(), *deep_bodies(depth=900)]
    for index, body in enumerate(bodies):
        (directory / f"seed-{index}").write_bytes(body)


def fuzz_one(name: str, seconds: int) -> None:
    import asyncio  # noqa: F401 - imported before instrumenting: the connection target's loop is not under test

    import atheris

    with atheris.instrument_imports():
        from extproc import ir

        decoder = targets()[name]

    def test_one_input(data: bytes) -> None:
        try:
            decoder(data)  # type: ignore[operator]
        except ir.GatewayError:
            pass

    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    seed_corpus(corpus, name)
    atheris.Setup(
        [sys.argv[0], f"-max_total_time={seconds}", "-max_len=4096", str(corpus)], test_one_input
    )
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--only", help="substring of the target names to run")
    args = parser.parse_args()
    failed = []
    for name in sorted(targets()):
        if args.only and args.only not in name:
            continue
        print(f"== {name} ({args.seconds} s)", flush=True)
        # A fresh interpreter, so the codecs are imported (and instrumented) inside atheris.
        spawn = multiprocessing.get_context("spawn")
        process = spawn.Process(target=fuzz_one, args=(name, args.seconds))
        process.start()
        process.join()
        if process.exitcode not in (0, None):
            failed.append(name)
    print("findings in:", ", ".join(failed) if failed else "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
