"""The ``sockwork`` command (also ``python -m sockwork``).

    sockwork [serve] [CONFIG] [--transport URL | -b URL] [--dispatcher NAME] [--workers N | -w N]
                     [--handler REF] [--option KEY=VALUE ...] [--drain-timeout S]
                     [--access-log text|json] [--log-level LEVEL]
                     (each flag but --option also as SOCKWORK_<FLAG>, e.g. SOCKWORK_WORKERS)
    sockwork check [CONFIG] [the same flags]
    sockwork plugins
    sockwork top URL [--json]           (a running server's /metrics, live; see sockwork._top)
    sockwork bench [--quick] ...        (see sockwork.bench)
    sockwork --version

``serve`` is the default command: ``sockwork app.toml`` and ``sockwork
--dispatcher pool`` serve. A first word that is neither a command nor a
config file name (``.toml``/``.json``) is refused as an unknown command.
With no arguments at all it serves the built-in echo handler on
tcp://127.0.0.1:9999. SIGINT or SIGTERM stops a server gracefully (stop
accepting, drain, exit 0); a second signal during the drain exits at once
with status 1 (with ``--lame-duck S``, the first one keeps serving S seconds
while health checks say draining). SIGHUP reloads: the config file and flags
are read again and checked, the handler's modules imported afresh; prefork
starts new workers with it and drains the old ones, other dispatchers apply
what can change in place and name the rest; a config that does not check is
refused in one line and the old one keeps serving (sockwork._operations).
SIGTTIN/SIGTTOU add/remove a prefork worker.

Handler modules are imported with the current directory first on
``sys.path``, for the ``sockwork`` script as for ``python -m sockwork``.

Exit status: 0 fine, 1 invalid configuration (``check``), 2 bad usage or a
server that could not start.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from . import __version__
from ._operations import fresh_handler_modules, handle_operations, reload_server
from ._upgrade import Handover, Upgrade, notify_systemd, take_handover, write_pid_file
from .assembly import assemble_config, build_server, load_config
from .config import FOREVER, LOG_FORMATS, LOG_LEVELS, ConfigErrors, ServerConfig, read_config_data
from .errors import ConfigError, PluginError, ServerError
from .hookspecs import hookimpl
from .registry import KINDS, Kind, Registry
from .validators import SECRET_SHOWN, is_secret, shown

__all__ = ["main"]

DEFAULT_TRANSPORT = "tcp://127.0.0.1:9999"
COMMANDS = ("serve", "check", "plugins", "top", "bench", "reload", "upgrade", "resize", "stop")
ENVIRONMENT = {  # SOCKWORK_<NAME>: the flag (its dest) it stands for, when the command line does not give it
    "SOCKWORK_CONFIG": "config", "SOCKWORK_TRANSPORT": "transport", "SOCKWORK_DISPATCHER": "dispatcher",
    "SOCKWORK_WORKERS": "workers", "SOCKWORK_HANDLER": "handler", "SOCKWORK_DRAIN_TIMEOUT": "drain_timeout",
    "SOCKWORK_ACCESS_LOG": "access_log", "SOCKWORK_LOG_LEVEL": "log_level", "SOCKWORK_LOG_FORMAT": "log_format",
    "SOCKWORK_METRICS": "metrics",
}
ENVIRONMENT_HELP = "SOCKWORK_CONFIG, SOCKWORK_TRANSPORT, ... SOCKWORK_LOG_LEVEL (the flag's name in capitals)"
_HANDLER_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")  # app:handle, a handler where a file was expected

logger = logging.getLogger("sockwork")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's own (for errors in that command's words)."""
    parser = argparse.ArgumentParser(
        prog="sockwork", description="Run and inspect sockwork servers.",
        epilog="With no COMMAND, or with a config file or flags first, 'serve' is meant. "
               f"Each flag of serve and check can also come from the environment: {ENVIRONMENT_HELP}.",
    )
    parser.add_argument("--version", action="version", version=f"sockwork {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_flags(command: argparse.ArgumentParser) -> None:
        command.epilog = f"Flags can also come from the environment: {ENVIRONMENT_HELP}; a flag given wins."
        command.add_argument("config", nargs="?", metavar="CONFIG", help="a .toml or .json config file (optional)")
        command.add_argument("--transport", "-b", "--bind", metavar="URL",
                             help=f"where to listen, e.g. tcp://[::1]:8000, unix:///run/app.sock, fd://3, "
                                  f"systemd:// (default: {DEFAULT_TRANSPORT}); -b/--bind as gunicorn's")
        command.add_argument("--dispatcher", metavar="NAME",
                             help="concurrency strategy: inline, thread, fork, pool, ... (default: thread)")
        command.add_argument("--workers", "-w", metavar="N",
                             help="the dispatcher's worker count, for one that has a 'workers' option "
                                  "(pool, prefork): short for --option dispatcher.workers=N")
        command.add_argument("--handler", metavar="REF",
                             help="a registered handler (address, discard, echo, lines; sockwork plugins lists "
                                  "all) or package.module:attribute (modules in the current directory are found)")
        command.add_argument("--framing", metavar="NAME",
                             help="the framing a message handler uses: lines, length, or a plugin's "
                                  "(sockwork plugins lists them); its options: --option framing.max_message=N")
        command.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                             help="a component option or limit, e.g. dispatcher.workers=8, transport.backlog=4096, "
                                  "limits.idle_timeout=30 "
                                  "(VALUE is read as TOML: 8, true, \"text\", [\"::1\", 0]); repeatable")
        command.add_argument("--drain-timeout", metavar="SECONDS",
                             help=f"how long running requests may finish when stopping (default: 10; '{FOREVER}')")
        command.add_argument("--access-log", choices=("text", "json"),
                             help="log one line per request (client, duration, bytes in/out, outcome) on the "
                                  "'sockwork.access' logger, as text or JSON lines (default: off)")
        command.add_argument("--lame-duck", metavar="SECONDS",
                             help="on SIGTERM, keep serving that long while health checks say draining, then stop "
                                  "listening and drain (default: 0, off)")
        command.add_argument("--pid-file", metavar="PATH",
                             help="write the server's process id there once serving; removed at exit")
        command.add_argument("--agent-check", metavar="URL",
                             help="answer HAProxy's agent check on tcp://HOST:PORT (up, drain, maint)")
        command.add_argument("--health", metavar="URL",
                             help="answer HTTP GET /healthz and /readyz on tcp://HOST:PORT")
        command.add_argument("--log-level", metavar="LEVEL",
                             help=f"one of {', '.join(LOG_LEVELS)}, in any case (default: INFO)")
        _observability_flags(command)

    own: dict[str, argparse.ArgumentParser] = {}
    own["serve"] = commands.add_parser("serve", help="run a server (the default command)")
    config_flags(own["serve"])
    own["check"] = commands.add_parser(
        "check", help="validate a config (a file, flags, or both) and print it resolved, without binding")
    config_flags(own["check"])
    own["plugins"] = commands.add_parser("plugins", help="list registered transports, dispatchers and handlers")
    own["top"] = _top_parser(commands)
    _signal_commands(commands, own)
    commands.add_parser("bench", help="benchmark the dispatchers against socketserver (see sockwork bench --help)")
    return parser, own


def _observability_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--log-format", choices=LOG_FORMATS,
                         help="text, or json: every log line one JSON object (default: text)")
    command.add_argument("--metrics", metavar="URL",
                         help="serve Prometheus' /metrics at tcp://HOST:PORT from the server's process "
                              "(needs pip install 'sockwork[prometheus]')")


def _top_parser(commands: Any) -> argparse.ArgumentParser:
    top: argparse.ArgumentParser = commands.add_parser(
        "top", help="a live view of a running server, read from its metrics endpoint (--metrics)")
    top.add_argument("url", metavar="URL", help="the server's metrics endpoint, e.g. http://127.0.0.1:9100/metrics "
                                                "(or tcp://127.0.0.1:9100, as given to --metrics)")
    top.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (default: 1)")
    top.add_argument("--count", type=int, default=None, metavar="N", help="stop after N refreshes (default: never)")
    return top


def _signal_commands(commands: Any, own: dict[str, argparse.ArgumentParser]) -> None:
    """``reload``, ``upgrade``, ``resize``, ``stop``: a signal to the server a pid file names."""
    for name, help_text in (("reload", "SIGHUP: the server reads its config again (prefork: new workers)"),
                            ("upgrade", "SIGUSR2: a new master takes over the listener; waits for the old to leave"),
                            ("resize", "SIGTTIN/SIGTTOU: N prefork workers more (+N) or fewer (-N)"),
                            ("stop", "SIGTERM: a graceful stop; waits for the server to exit")):
        own[name] = commands.add_parser(name, help=help_text)
        if name == "resize":
            own[name].add_argument("change", metavar="+N|-N", help="how many workers more (+N) or fewer (-N)")
        own[name].add_argument("pid_file", metavar="PIDFILE", help="the server's pid file (pid_file, --pid-file)")
        if name in ("upgrade", "stop"):
            own[name].add_argument("--timeout", metavar="SECONDS", type=float, default=60.0,
                                   help="how long to wait for the outcome (default: 60)")


def _looks_like_a_config_file(word: str) -> bool:
    """``app.toml``, ``conf/app``, ``app.yaml``: a file (whose name read_config_data checks), not a command."""
    return "." in word or "/" in word or os.sep in word


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        # The console script starts with its own directory on sys.path, ``python -m``
        # with the current one: make `--handler app:handle` find ./app.py either way.
        _current_directory_first()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench  # imports the standard socketserver: only when asked

        return bench(argv[1:])
    parser, own = _parser()
    if argv and argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        if argv[0].startswith("-") or _looks_like_a_config_file(argv[0]):
            argv.insert(0, "serve")
        elif _HANDLER_REF.fullmatch(argv[0]):
            parser.error(f"{argv[0]!r} is not a command; did you mean 'sockwork serve --handler {argv[0]}'?")
        else:
            close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parser.error(f"unknown command {argv[0]!r}{hint}; commands: {', '.join(COMMANDS)}. "
                         "A config file's name ends in .toml or .json.")
    if not argv:
        argv = ["serve"]
    if argv[0] in own and (hint := _address_hint(argv[1:])):  # before parsing: --port's value is no CONFIG
        own[argv[0]].error(hint)
    args, extra = parser.parse_known_args(argv)
    if extra:  # in the words, and with the usage, of the command they were given to
        own[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("serve", "check"):
        config = args.config
        if config is not None and _HANDLER_REF.fullmatch(config) and not os.path.exists(config):
            own[args.command].error(f"{config!r} is not a config file (a .toml or .json file); "
                                    f"did you mean --handler {config}?")
        args.environment = _from_environment(args)
    try:
        return _run(args)
    except BrokenPipeError:  # `sockwork plugins | head`: the reader left; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _address_hint(words: list[str]) -> str:
    """For ``--host 0.0.0.0 --port 8000`` (uvicorn's, flask's habit): the error, with the --transport URL meant."""
    given: dict[str, str] = {}
    for i, word in enumerate(words):
        name, equals, value = word.partition("=")
        if name in ("--host", "--port"):
            following = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-") else ""
            given[name[2:]] = value if equals else following
    if not given:
        return ""
    host = given.get("host") or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return (f"no {' or '.join(f'--{name}' for name in given)}: sockwork takes the address as a URL, "
            f"--transport tcp://{host}:{given.get('port') or 'PORT'} (or -b/--bind)")


def _from_environment(args: argparse.Namespace) -> list[str]:
    """Fill the flags the command line did not give from SOCKWORK_* variables; return the names used."""
    used = []
    for variable, dest in ENVIRONMENT.items():
        value = os.environ.get(variable)
        if value and getattr(args, dest) is None:
            setattr(args, dest, value)
            used.append(variable)
    return used


def _current_directory_first() -> None:
    """What ``python -m`` does, unless the interpreter was told not to (``-P``, PYTHONSAFEPATH)."""
    if sys.flags.safe_path:
        return
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _run(args: argparse.Namespace) -> int:
    if args.command in ("reload", "upgrade", "resize", "stop"):
        return _signal_command(args)
    if args.command == "plugins":
        return _plugins(Registry())
    if args.command == "top":
        from ._top import main as top  # loaded only for `sockwork top`

        return top(args.url, as_json=args.json, interval=args.interval, count=args.count)
    registry = Registry()
    try:
        config = _config_from(args, registry)
    except ConfigError as exc:
        print(f"sockwork: {_one_problem_one_line(exc)}", file=sys.stderr)
        return 1 if args.command == "check" else 2
    if args.command == "check":
        try:  # the same step as serving, short of binding: what passes check, starts
            assemble_config(config, registry, source=_source(args))
        except PluginError as exc:
            print(f"sockwork: {exc}", file=sys.stderr)
            return 2
        except ConfigError as exc:
            print(f"sockwork: {_one_problem_one_line(exc)}", file=sys.stderr)
            return 1
        print(json.dumps(_secrets_hidden(config.to_dict(), registry), indent=2))
        return 0
    return _serve(config, registry, source=_source(args), reread=lambda: _config_from(args, registry))


def _signal_command(args: argparse.Namespace) -> int:
    """``sockwork reload|upgrade|resize ±N|stop PIDFILE``: signal the server named by its pid file; one line."""
    command = args.command if args.command != "resize" else f"resize {args.change}"
    try:
        pid = read_pid_file(args.pid_file)
        if args.command == "resize":
            return _say(command, *send_resize(pid, args.change))
        if args.command == "reload":
            os.kill(pid, signal.SIGHUP)
            return _say(command, f"sent SIGHUP to {pid}; the server logs what it applied", 0)
        if args.command == "stop":
            os.kill(pid, signal.SIGTERM)
            ended = wait_until(lambda: not _alive(pid), args.timeout)
            return _say(command, f"{pid} stopped" if ended else f"sent SIGTERM to {pid}; still running after "
                                 f"{args.timeout:g} s (draining?)", 0 if ended else 1)
        os.kill(pid, signal.SIGUSR2)
        replaced = wait_until(lambda: _pid_or_none(args.pid_file) not in (pid, None) and not _alive(pid),
                              args.timeout)
        if replaced:
            return _say(command, f"{pid} -> {_pid_or_none(args.pid_file)}: the new master serves, the old one "
                                 "drained and exited", 0)
        return _say(command, f"sent SIGUSR2 to {pid}; no new master took over within {args.timeout:g} s "
                             "(the server's log says why)", 1)
    except (OSError, ValueError) as exc:
        return _say(command, str(exc) if isinstance(exc, ValueError) else f"{exc.strerror or exc}", 2)


def _say(command: str, result: str, status: int) -> int:
    print(f"sockwork {command}: {result}", file=sys.stdout if status == 0 else sys.stderr, flush=True)
    return status


def read_pid_file(path: str) -> int:
    """The live process a pid file names; ValueError (in words) for a missing, malformed or stale file."""
    try:
        with open(path, encoding="ascii") as file:
            text = file.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read pid file {path!r}: {exc.strerror or exc}") from None
    if not text.isdigit():
        raise ValueError(f"pid file {path!r} does not hold a process id: {text[:40]!r}")
    pid = int(text)
    if not _alive(pid):
        raise ValueError(f"no process {pid} (from {path!r}): the pid file is stale")
    return pid


def send_resize(pid: int, change: str) -> tuple[str, int]:
    """``+N``: N × SIGTTIN, ``-N``: N × SIGTTOU, 0.2 s apart (a signal sent again before the first was
    handled would count once)."""
    if not re.fullmatch(r"[+-][1-9][0-9]*", change):
        raise ValueError(f"write the change as +N or -N (N >= 1), got {change!r}")
    signum = signal.SIGTTIN if change[0] == "+" else signal.SIGTTOU
    for index in range(int(change[1:])):
        if index:
            time.sleep(0.2)
        os.kill(pid, signum)
    return f"sent {signum.name} to {pid} {change[1:]} time(s); the server logs each resize", 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:  # a zombie has exited
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def _pid_or_none(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as file:
            text = file.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def wait_until(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _secrets_hidden(data: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """A config's plain data with each part's secret options (sockwork.validators.SECRET) shown as ``***``."""
    parts: tuple[tuple[Kind, str], ...] = (("transport", "name"), ("dispatcher", "name"), ("handler", "ref"),
                                           ("framing", "name"))
    for kind, key in parts:
        table = data.get(kind)
        if not isinstance(table, dict) or not isinstance(table.get("options"), dict):
            continue
        name = table.get(key)
        if kind == "transport" and isinstance(table.get("url"), str):
            name = registry.parse_transport_url(table["url"])[0]
        try:
            entry = registry.get(kind, name) if isinstance(name, str) else None
        except ConfigError:
            entry = None
        if entry is not None:
            table["options"] = shown(entry.options, table["options"])
    return data


def _one_problem_one_line(exc: ConfigError, source: str | None = None) -> str:
    """A single problem on one line (``source: field: message``); several as a list under a heading."""
    if not isinstance(exc, ConfigErrors):
        return str(exc)
    source = source or exc.source
    if len(exc.errors) == 1:
        (path, message), = exc.errors
        return f"{source}: {path}: {message}"
    return str(ConfigErrors(exc.errors, source))


def _source(args: argparse.Namespace) -> str:
    """Where the settings came from, as problems are reported: a file, flags, or both (and the environment)."""
    flags = any((args.transport, args.dispatcher, args.workers, args.handler, args.framing, args.drain_timeout,
                 args.log_level, args.access_log, args.option, args.lame_duck, args.pid_file, args.agent_check,
                 args.health))
    source = f"{args.config} with the command line's flags" if args.config and flags else args.config or "command line"
    environment = getattr(args, "environment", [])
    return f"{source} (and {', '.join(environment)})" if environment else source


def _config_from(args: argparse.Namespace, registry: Registry) -> ServerConfig:
    """The config file's settings with the flags on top, validated in one go."""
    data: dict[str, Any] = read_config_data(args.config) if args.config else {"transport": DEFAULT_TRANSPORT}
    if args.transport:
        data["transport"] = args.transport
    if args.dispatcher:
        data["dispatcher"] = _keep_options_if_same(data.get("dispatcher"), "name", args.dispatcher)
    if args.handler:
        data["handler"] = _keep_options_if_same(data.get("handler"), "ref", args.handler)
    if args.framing:
        data["framing"] = _keep_options_if_same(data.get("framing", "lines"), "name", args.framing)
    if args.drain_timeout is not None:
        data["drain_timeout"] = args.drain_timeout if args.drain_timeout == FOREVER else _number(args.drain_timeout)
    if args.log_level:
        data["log_level"] = args.log_level
    if args.lame_duck is not None:
        data["lame_duck"] = _number(args.lame_duck)
    for key in ("pid_file", "agent_check", "health"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.access_log:
        data["access_log"] = args.access_log
    if args.log_format:
        data["log_format"] = args.log_format
    if args.metrics:
        data["metrics"] = args.metrics
    if args.workers is not None:
        _apply_workers(data, args.workers, args.option, registry)
    for option in args.option:
        _apply_option(data, option)
    return load_config(data, registry, source=_source(args))


def _apply_workers(data: dict[str, Any], workers: str, options: list[str], registry: Registry) -> None:
    """``--workers N``: the dispatcher's ``workers`` option, for a dispatcher that has one."""
    if any(option.partition("=")[0].strip() == "dispatcher.workers" for option in options):
        raise ConfigError("--workers and --option dispatcher.workers=... both given; give one")
    current = data.get("dispatcher", "thread")
    name = current if isinstance(current, str) else current.get("name", "thread") if isinstance(current, dict) else None
    counted = [entry.name for entry in registry.entries("dispatcher")
               if "workers" in attrs.fields_dict(entry.options)]
    known = {entry.name for entry in registry.entries("dispatcher")}
    if isinstance(name, str) and name in known and name not in counted:
        raise ConfigError(f"--workers: dispatcher {name!r} has no 'workers' option; dispatchers with a worker "
                          f"count: {', '.join(counted) or '(none)'}, e.g. --dispatcher {(counted or ['pool'])[0]} "
                          f"--workers {workers}")
    _apply_option(data, f"dispatcher.workers={workers}")  # an unknown dispatcher is reported by load_config


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
    defaults = {"dispatcher": "thread", "handler": "echo", "framing": "lines"}  # a missing transport: an error
    key = {"transport": "url", "dispatcher": "name", "handler": "ref", "framing": "name"}[part]
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


def _serve(
    config: ServerConfig, registry: Registry, source: str, reread: Callable[[], ServerConfig] | None = None,
) -> int:
    _configure_logging(config)
    handler = config.handler.ref if isinstance(config.handler.ref, str) else repr(config.handler.ref)
    handover = take_handover()  # an upgrade in place: the old master's sockets, and how to tell it we serve
    announce = _Announce(handler, config.dispatcher.name, handover)
    registry.plugin_manager.register(announce, name="sockwork.cli")  # before assembly: the server calls it
    try:
        server = build_server(config, registry, handover=handover)
    except ConfigError as exc:  # found when the parts are built: an inherited descriptor, say
        print(f"sockwork: {_one_problem_one_line(exc, source)}", file=sys.stderr)
        return 2
    except (ServerError, OSError) as exc:
        print(f"sockwork: {exc}", file=sys.stderr)
        return 2
    if config.pid_file is not None:
        try:
            write_pid_file(config.pid_file, os.getpid())
        except OSError as exc:
            print(f"sockwork: pid_file: cannot write {config.pid_file!r}: {exc.strerror or exc}", file=sys.stderr)
            server.close()
            return 2
    reload = None if reread is None else _reloader(server, config, registry, source, reread)
    upgrade = Upgrade(server, config.pid_file)
    with server.handle_signals(), handle_operations(server, reload, upgrade.start), _pid_file(config.pid_file):
        try:
            try:
                server.serve_forever()
            except Exception as exc:
                if announce.said:
                    raise
                # The dispatcher's start() failed: nothing was served. One line, as for any broken part.
                print(f"sockwork: dispatcher {config.dispatcher.name!r} failed to start: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
                return 2
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


def _configure_logging(config: ServerConfig) -> None:
    """Log lines on stderr: text (``time logger LEVEL message``) or JSON lines; the JSON access log bare.

    With ``access_log = "json"`` the access lines are one JSON object each
    whatever ``log_format`` says (docs/config.md lists their keys).
    """
    from .logs import JsonFormatter  # only `sockwork serve` configures logging

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if config.log_format == "json"
                         else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=config.log_level, handlers=[handler])
    if config.access_log == "json" and config.log_format != "json":
        access = logging.StreamHandler()
        access.setFormatter(JsonFormatter())
        access_logger = logging.getLogger("sockwork.access")
        access_logger.addHandler(access)
        access_logger.propagate = False


class _Announce:
    """Prints the "serving" line once the server has started (its dispatcher's start() returned)."""

    def __init__(self, handler: str, dispatcher: str, handover: Handover | None = None) -> None:
        self.handler, self.dispatcher, self.handover = handler, dispatcher, handover
        self.said = False

    @hookimpl(tryfirst=True)
    def sockwork_server_started(self, server: Any) -> None:
        side = "".join(f"; {name} on {listener.url}" for name, listener in server.side_listeners.items())
        print(f"sockwork: serving {self.handler!r} on {server.url} with dispatcher {self.dispatcher!r} "
              f"(pid {os.getpid()}){side}", flush=True)
        self.said = True
        if self.handover is not None:
            self.handover.serving()  # the old master hands over (MAINPID= to systemd), drains and exits
        else:
            notify_systemd("READY=1")  # Type=notify units: started


def _reloader(
    server: Any, config: ServerConfig, registry: Registry, source: str, reread: Callable[[], ServerConfig],
) -> Callable[[], str]:
    """SIGHUP's action: read the config again (file and flags), check it with the handler's code imported
    afresh, apply it (:func:`sockwork._operations.reload_server`); a ConfigError refuses it."""
    current = [config]

    def reload() -> str:
        new = reread()
        with fresh_handler_modules(new.handler.ref):
            try:
                parts = assemble_config(new, registry, source=source)
            except PluginError as exc:
                raise ConfigError(str(exc)) from None
        result = reload_server(server, current[0], new, parts)
        current[0] = new
        return f"read {source} again: {result}"

    return reload


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    """Remove the pid file ``path`` (written already) after the block, if it still names this process."""
    if path is None:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            with open(path, encoding="ascii") as file:
                ours = file.read().strip() == str(os.getpid())
            if ours:  # a new master (an upgrade) has rewritten it otherwise
                os.unlink(path)


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
            if (kind, entry.name) in registry.shadowed:
                status += "  SHADOWS: " + ", ".join(
                    f"[{lost.plugin}, {distributions.get(lost.plugin, '?')}]"
                    for lost in registry.shadowed[kind, entry.name])
            print(f"  {entry.name:<12} {entry.description}  [{entry.plugin}, {origin}]{status}")
            if kind == "transport":
                print(f"      URLs: {', '.join(scheme + '://' for scheme in registry.schemes_of(entry.name))}")
            for field in attrs.fields(entry.options):
                default = "required" if field.default is attrs.NOTHING else _show_default(field.default)
                if is_secret(field) and field.default not in (attrs.NOTHING, None):
                    default = SECRET_SHOWN
                print(f"      {field.alias} = {default}")
    print("lifecycle hooks:")
    for name, hooks in registry.lifecycle_plugins():
        print(f"  {name:<12} {', '.join(hooks)}  [{name}, {distributions.get(name, '?')}]")
    failures = [(name, origin, exc) for name, origin, exc in getattr(pm, "load_failures", [])]
    failures += [(name, distributions.get(name, "?"), exc) for name, _, exc in registry.failures]
    if failures:
        print("plugins that failed:")
        for name, origin, exc in failures:
            print(f"  {name} [{origin}]: FAILED: {type(exc).__name__}: {exc}")
    return 0


def _show_default(default: Any) -> str:
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # a class, typed as a function in attrs' stubs
        return f"{default.factory()!r} (computed)" if not default.takes_self else "(computed)"
    return repr(default)
