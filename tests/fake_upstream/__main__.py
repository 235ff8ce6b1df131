"""``python -m tests.fake_upstream --port N [--host H] [--delay-ms N]``.

Serves the fake upstream until SIGINT/SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource

from tests.fake_upstream import FakeUpstream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_upstream", description="OpenAI-compatible fake upstream LLM API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=int, default=0, help="added before every POST answer")
    parser.add_argument(
        "--default-step", default="200", help="the answer for unscripted models, e.g. 503"
    )
    args = parser.parse_args(argv)
    _, hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # room for many held connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard_limit, hard_limit))
    upstream = FakeUpstream(
        delay_ms=args.delay_ms,
        host=args.host,
        port=args.port,
        record=False,
        default_step=args.default_step,
    )

    def announce() -> None:
        print(f"fake upstream listening on {upstream.base_url}", flush=True)

    asyncio.run(upstream.serve(on_ready=announce, stop_on_signals=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
