"""The ``sockwork`` command (also ``python -m sockwork``).

    sockwork serve [CONFIG] [--transport URL] [--dispatcher NAME] [--handler REF]
                   [--option KEY=VALUE ...] [--drain-timeout S] [--log-level LEVEL]
    sockwork check CONFIG [the same flags]
    sockwork plugins
    sockwork bench [--quick] ...        (see sockwork.bench)

With no arguments at all it serves the built-in echo handler on
tcp://127.0.0.1:9999. SIGINT or SIGTERM stops a server gracefully (stop
accepting, drain, exit 0); a second signal during the drain exits at once
with status 1.

Exit status: 0 fine, 1 invalid configuration (``check``), 2 bad usage or a
server that could not start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import tomllib
from collections.abc import Sequence
from typing import Any

import attrs

from ._server import build_server
from .assembly import assemble_config
from .config import FOREVER, ServerConfig, load_config, read_config_data
from .errors import ConfigError, PluginError, ServerError
from .registry import KINDS, Registry

__all__ = ["main"]

DEFAULT_TRANSPORT = "tcp://127.0.0.1:9999"
COMMANDS = ("serve", "check", "plugins", "bench")

logger = logging.getLogger("sockwork")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockwork", description="Run and inspect sockwork servers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_flags(command: argparse.ArgumentParser, config_required: bool) -> None:
        command.add_argument("config", nargs=None if config_required else "?", metavar="CONFIG",
                             help="a .toml or .json config file" + ("" if config_required else " (optional)"))
        command.add_argument("--transport", metavar="URL",
                             help=f"where to listen, e.g. tcp://[::1]:8000, unix:///run/app.sock, fd://3, "
                                  f"systemd:// (default: {DEFAULT_TRANSPORT})")
        command.add_argument("--dispatcher", metavar="NAME",
                             help="concurrency strategy: inline, thread, fork, pool, ... (default: thread)")
        command.add_argument("--handler", metavar="REF",
                             help="a registered handler (echo, discard, lines) or package.module:attribute")
        command.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                             help="a component option or limit, e.g. dispatcher.workers=8, transport.backlog=4096, "
                                  "limits.idle_timeout=30 "
                                  "(VALUE is read as TOML: 8, true, \"text\", [\"::1\", 0]); repeatable")
        command.add_argument("--drain-timeout", metavar="SECONDS",
                             help=f"how long running requests may finish when stopping (default: 10; '{FOREVER}')")
        command.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO (default), WARNING, ERROR")

    config_flags(commands.add_parser("serve", help="run a server (the default command)"), config_required=False)
    config_flags(commands.add_parser("check", help="validate a config and print it resolved"), config_required=True)
    commands.add_parser("plugins", help="list registered transports, dispatchers and handlers")
    commands.add_parser("bench", help="benchmark the dispatchers against socketserver (see sockwork bench --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench  # imports the standard socketserver: only when asked

        return bench(argv[1:])
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "serve")
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:  # `sockwork plugins | head`: the reader left; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "plugins":
        return _plugins(Registry())
    registry = Registry()
    try:
        config = _config_from(args, registry)
    except ConfigError as exc:
        print(f"sockwork: {exc}", file=sys.stderr)
        return 1 if args.command == "check" else 2
    if args.command == "check":
        try:  # the same step as serving, short of binding: what passes check, starts
            assemble_config(config, registry, source=args.config or "command line")
        except PluginError as exc:
            print(f"sockwork: {exc}", file=sys.stderr)
            return 2
        except ConfigError as exc:
            print(f"sockwork: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    return _serve(config, registry)


def _config_from(args: argparse.Namespace, registry: Registry) -> ServerConfig:
    """The config file's settings with the flags on top, validated in one go."""
    data: dict[str, Any] = read_config_data(args.config) if args.config else {"transport": DEFAULT_TRANSPORT}
    flags = any((args.transport, args.dispatcher, args.handler, args.drain_timeout, args.log_level, args.option))
    source = f"{args.config} with the command line's flags" if args.config and flags else args.config or "command line"
    if args.transport:
        data["transport"] = args.transport
    if args.dispatcher:
        data["dispatcher"] = _keep_options_if_same(data.get("dispatcher"), "name", args.dispatcher)
    if args.handler:
        data["handler"] = _keep_options_if_same(data.get("handler"), "ref", args.handler)
    if args.drain_timeout is not None:
        data["drain_timeout"] = args.drain_timeout if args.drain_timeout == FOREVER else _number(args.drain_timeout)
    if args.log_level:
        data["log_level"] = args.log_level
    for option in args.option:
        _apply_option(data, option)
    return load_config(data, registry, source=source)


def _as_table(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {key: value, "options": {}}
    return {**value, "options": dict(value.get("options", {}))} if isinstance(value, dict) else {"options": {}}


def _keep_options_if_same(current: Any, key: str, new: str) -> dict[str, Any]:
    table = _as_table(current, key) if current is not None else {"options": {}}
    same = table.get(key) == new
    return {key: new, "options": table["options"] if same else {}}


def _apply_option(data: dict[str, Any], option: str) -> None:
    key, sep, text = option.partition("=")
    part, dot, name = key.strip().partition(".")
    if not sep or not dot or part not in (*KINDS, "limits") or not name:
        raise ConfigError(f"--option {option!r}: write KIND.NAME=VALUE with KIND one of {', '.join(KINDS)} "
                          "or limits, e.g. dispatcher.workers=8 or limits.idle_timeout=30")
    if part == "limits":
        limits = data.get("limits")
        data["limits"] = {**(limits if isinstance(limits, dict) else {}), name: _value(text)}
        return
    defaults = {"dispatcher": "thread", "handler": "echo"}  # a missing transport stays missing: an error
    key = {"transport": "url", "dispatcher": "name", "handler": "ref"}[part]
    current = data.get(part, defaults.get(part))
    table = _as_table(current, key) if current is not None else {"options": {}}
    table["options"][name] = _value(text)
    data[part] = table


def _value(text: str) -> Any:
    """A flag value read as TOML (8, true, "x", [..]); anything else is a plain string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _number(text: str) -> Any:
    value = _value(text)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else text


def _serve(config: ServerConfig, registry: Registry) -> int:
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        server = build_server(config, registry)
    except (ServerError, OSError) as exc:
        print(f"sockwork: {exc}", file=sys.stderr)
        return 2
    with server.handle_signals():
        try:
            handler = config.handler.ref if isinstance(config.handler.ref, str) else repr(config.handler.ref)
            print(
                f"sockwork: serving {handler!r} on {server.url} with dispatcher "
                f"{config.dispatcher.name!r} (pid {os.getpid()})",
                flush=True,
            )
            server.serve_forever()
        finally:
            _close_attentively(server)
    logger.info("stopped")
    if threading.active_count() > 1:
        # Handlers abandoned at the drain deadline (logged above) must not keep
        # the process alive: that is what the deadline is for.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    return 0


def _close_attentively(server: Any) -> None:
    """Close the server in a helper thread while the main thread stays ready for signals.

    Blocked in a join, the main thread would not run a second signal's
    handler if the signal went to another thread; a short timed wait does.
    """
    closer = threading.Thread(target=server.close, name="sockwork-drain")
    closer.start()
    while closer.is_alive():
        closer.join(0.1)


def _plugins(registry: Registry) -> int:
    pm = registry.plugin_manager
    distributions = getattr(pm, "distributions", {})
    for kind in KINDS:
        print(f"{kind}s:")
        for entry in registry.entries(kind):
            origin = distributions.get(entry.plugin, "?")
            status = f"  UNAVAILABLE: {entry.unavailable_reason}" if entry.unavailable_reason else ""
            print(f"  {entry.name:<12} {entry.description}  [{entry.plugin}, {origin}]{status}")
            for field in attrs.fields(entry.options):
                default = "required" if field.default is attrs.NOTHING else _show_default(field.default)
                print(f"      {field.alias} = {default}")
    failures = [(name, origin, exc) for name, origin, exc in getattr(pm, "load_failures", [])]
    failures += [(name, distributions.get(name, "?"), exc) for name, _, exc in registry.failures]
    if failures:
        print("plugins that failed:")
        for name, origin, exc in failures:
            print(f"  {name} [{origin}]: FAILED: {type(exc).__name__}: {exc}")
    return 0


def _show_default(default: Any) -> str:
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return f"{default.factory()!r} (computed)" if not default.takes_self else "(computed)"
    return repr(default)
