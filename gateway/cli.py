"""console-gateway: serve, check-config and demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import yaml
from aiohttp import web

from gateway.app import create_app
from gateway.config import ConfigError, Settings
from gateway.config_loader import load_settings, masked_dump
from gateway.drain import drain_on_signal
from gateway.observability import AccessLogger, setup_logging
from gateway.relay import CLOSE_TIMEOUT_S

log = logging.getLogger("gateway.cli")

T = TypeVar("T")


def run_async(main: Coroutine[Any, Any, T], event_loop: str = "uvloop") -> T:
    """Run main on the event loop named by server.event_loop (benchmark baselines use it too).

    uvloop: console creation answers ~15-20% more requests per second on it than on asyncio's
    own loop (bench/api.py).
    """
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # a dependency; without it the standard loop still works
            log.warning("uvloop is not installed: serving on asyncio's standard event loop")
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one: each console holds two sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft


def _load_or_exit(path: str | None) -> Settings:
    try:
        return load_settings(path, os.environ)
    except ConfigError as exc:
        print(f"console-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load_or_exit(args.config or os.environ.get("CGW_CONFIG"))
    setup_logging(settings.logging)
    raise_fd_limit()
    run_async(serve(settings), settings.server.event_loop)
    return 0


def runner_options(settings: Settings) -> dict[str, Any]:
    """The AppRunner options the gateway serves with (tests serve with them too)."""
    return {
        "access_log_class": AccessLogger,
        "handle_signals": False,
        # After the drain, handlers still finishing (closing their upstream leg) get this long.
        "shutdown_timeout": CLOSE_TIMEOUT_S,
        # aiohttp's only clock on a connection that has not sent a whole request yet (3630 s
        # by default): it closes slowloris handshakes and idle keep-alive connections.
        "keepalive_timeout": settings.server.keepalive_timeout_s,
    }


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, drain, then close what is left."""
    # Not web.run_app: its signal handling closes every connection at once, with no drain.
    runner = web.AppRunner(create_app(settings), **runner_options(settings))
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.server.host, settings.server.port).start()
        log.info(
            "listening",
            extra={"fields": {"event": "listening", "port": settings.server.port}},
        )
        await drain_on_signal(runner.app, settings.drain)
    finally:
        await runner.cleanup()


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load_or_exit(args.file)
    print(yaml.safe_dump(masked_dump(settings), sort_keys=False), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo  # the only place the simulator is imported

    asyncio.run(run_demo(host=args.host, port=args.port))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.simulator.standalone import SimulatorOptions, run_simulator

    token = os.environ.get("CGW_SIM_SERVICE_TOKEN", "")
    if not token:
        print("console-gateway: CGW_SIM_SERVICE_TOKEN must be set", file=sys.stderr)
        return 2
    options = SimulatorOptions(
        args.host, args.compute_port, args.console_port, args.public_host, token
    )
    asyncio.run(run_simulator(options))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="console-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML settings file (default: $CGW_CONFIG)")
    serve.set_defaults(func=cmd_serve)
    check = commands.add_parser("check-config", help="validate a settings file, print it masked")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)
    demo = commands.add_parser("demo", help="gateway + simulator + embedded store in one process")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.set_defaults(func=cmd_demo)
    simulate = commands.add_parser(
        "simulate", help="only the simulated cloud (compute API + console proxy), for compose"
    )
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--compute-port", type=int, default=8774)
    simulate.add_argument("--console-port", type=int, default=6080)
    simulate.add_argument("--public-host", default="127.0.0.1", help="host in console URLs")
    simulate.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
