"""
The ``twistd stomptw`` command line: options and ``makeService``.

The options are generated from the declarations of
:class:`~stomptw.config.BrokerConfig`'s fields (:func:`stomptw.config.settings`):
a value setting is a parameter, a switch a flag, a repeatable setting an
``opt_*`` handler (and its ``off`` switch a flag). ``--config FILE`` reads the
same settings from a TOML file; the command line overrides it.
"""

from __future__ import annotations

import difflib
import errno
import socket
import sys
from collections.abc import Callable

from twisted.application.service import IService
from twisted.cred import credentials, strcred
from twisted.python import usage

from stomptw.config import (
    DEFAULT_TCP,
    DEFAULT_WS,
    LIST,
    SWITCH,
    VALUE,
    BrokerConfig,
    Setting,
    settings,
    tcp_address,
)
from stomptw.configfile import (
    ConfigError,
    SettingValues,
    config_from_values,
    load_config_file,
    origin_of,
)
from stomptw.credentials import ICertificateCredentials
from stomptw.memalarm import heap_trim_service
from stomptw.permissions import PermissionsError

__all__ = ["Options", "busy_listeners", "makeService", "config_from_options"]

#: The settings that have a flag, in declaration order.
_SETTINGS = tuple(s for s in settings() if s.key)


def _coerce(setting: Setting) -> Callable[[str], object]:
    """The coerce function of a generated parameter: its errors name the option and value."""

    def coerce(text: str) -> object:
        try:
            return setting.from_text(text)
        except ValueError as e:
            # usage.CoerceParameter would prefix a ValueError's message with
            # "Parameter type enforcement failed"; a UsageError goes through.
            raise usage.UsageError(f"{setting.flag}: {e}") from None

    return coerce


def _handler(setting: Setting) -> Callable[[usage.Options, str], None]:
    """The ``opt_*`` method of a repeatable setting: each occurrence adds to the list."""

    def handler(self: usage.Options, value: str) -> None:
        self[setting.key].extend(setting.from_text(value))

    default = f"; default {', '.join(setting.default)}" if setting.default else ""
    handler.__doc__ = f"{setting.help} (repeatable{default})."
    handler.__name__ = "opt_" + setting.key.replace("-", "_")
    handler.metavar = setting.metavar  # for the reference (docs/_ext/stomptw_sphinx.py)
    return handler


class Options(strcred.AuthOptionMixin, usage.Options):
    """
    Options of ``twistd stomptw``, one per declared setting, plus ``--config``,
    the process's own ``--no-gc-freeze``, and Twisted's ``--help-auth`` and
    ``--help-auth-type`` (:class:`~twisted.cred.strcred.AuthOptionMixin`).

    Until :meth:`postOptions`, a parameter not given on the command line is
    None (so that a configuration file can set it); afterwards every
    parameter holds the value in force.

    :ivar config: the :class:`~stomptw.config.BrokerConfig` (after parsing).
    :ivar config_file: the settings read from ``--config``, if given.
    :ivar admin_token: the admin API's bearer token, read from
        ``--admin-token-file`` while checking the options; None without one.
    :ivar checkers: the credentials checkers made from ``--auth``.
    """

    synopsis = "[options]"
    #: What a STOMP login can present (for ``--help-auth``).
    supportedInterfaces = (
        credentials.IUsernamePassword,
        credentials.IAnonymous,
        ICertificateCredentials,
    )
    longdesc = (
        "Run the stomptw STOMP broker. With no options it serves STOMP over TCP on "
        f"{DEFAULT_TCP} and STOMP over WebSocket on {DEFAULT_WS} at the path /ws. "
        "Listeners take Twisted endpoint strings (see 'Twisted endpoint strings' in "
        "the Twisted documentation), e.g. tcp:61613, tcp:61613:interface=0.0.0.0, "
        "ssl:61614:privateKey=key.pem:certKey=cert.pem. Every option can also be "
        "set in a TOML file read with --config, under its long name without the "
        "dashes (max-connections = 100); the command line overrides the file."
    )

    optFlags = [[s.off_key, None, s.off_help] for s in _SETTINGS if s.off_key]
    optFlags += [[s.key, None, s.help] for s in _SETTINGS if s.kind == SWITCH]
    optFlags += [
        [
            "no-gc-freeze",
            None,
            "Do not gc.freeze() the objects alive once the broker is ready (doing so keeps "
            "them out of every later full garbage collection).",
        ],
    ]

    optParameters = [
        [s.key, None, s.text(s.default), s.help, _coerce(s)] for s in _SETTINGS if s.kind == VALUE
    ]
    optParameters += [
        [
            "config",
            None,
            None,
            "Read settings from this TOML file: the keys are the long option names "
            'without the dashes (max-connections = 100, tcp = ["tcp:61613"], '
            "no-examples = true); options given on the command line override it.",
        ],
    ]

    #: Option names to what their value is called (``SECONDS``, ``FILE``),
    #: for the generated reference (docs/_ext/stomptw_sphinx.py).
    optMetavars = {s.key: s.metavar for s in _SETTINGS if s.kind == VALUE} | {"config": "FILE"}

    #: Option names to a line setting them in the configuration file, for
    #: the generated reference (docs/_ext/stomptw_sphinx.py).
    configFileLines = {key: line for s in _SETTINGS for key, line in s.toml_lines().items()}

    def __init__(self) -> None:
        super().__init__()
        for s in _SETTINGS:
            if s.kind == VALUE:
                self[s.key] = None  # not given; self.defaults keeps the default for --help
            elif s.kind == LIST:
                self[s.key] = []
        self.config_file: SettingValues | None = None
        self.admin_token: str | None = None
        self.checkers: list = []

    #: Set once parsing failed: twistd then prints :meth:`getUsage` above the
    #: error, which is then a pointer to ``--help`` rather than every option.
    failed = False

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse; an unknown option's error suggests the nearest known one."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            self.failed = True
            raise usage.UsageError(_did_you_mean(str(e), self)) from None

    def getUsage(self, width: int | None = None) -> str:
        if self.failed:
            return "Run 'twistd stomptw --help' to list every option.\n"
        return super().getUsage(width)

    def postOptions(self) -> None:
        try:
            if self["config"]:
                self.config_file = load_config_file(self["config"])
            sources = _sources(self)  # before the parameters hold the values in force
            # Endpoint strings first: a malformed one is not "beyond loopback".
            for source in sources:
                for key in ("tcp", "ws", "admin"):
                    for description in source.values.get(key, []):
                        _check_endpoint(description, source.where(key))
            self.config = config_from_values(*sources)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        for s in _SETTINGS:
            if s.kind == VALUE:
                self[s.key] = s.get(self.config)
        if self.config.admin_token_file:
            from stomptw.admin import load_token

            try:
                self.admin_token = load_token(self.config.admin_token_file)
            except ValueError as e:
                where = origin_of("admin-token-file", *sources)
                raise usage.UsageError(f"{where}: {e}") from None
        for description in self.config.auth:
            self.checkers.append(_checker(self, description, sources))


def _did_you_mean(message: str, options: usage.Options) -> str:
    """``message`` with the nearest known option when it names an unknown one."""
    prefix = "option "
    if not (message.startswith(prefix) and message.endswith(" not recognized")):
        return message
    given = message[len(prefix) : -len(" not recognized")].lstrip("-")
    known = [name.rstrip("=") for name in options.longOpt]
    close = difflib.get_close_matches(given, known, n=1, cutoff=0.6)
    return f"{message}; did you mean --{close[0]}?" if close else message


class _ParseOnly:
    """A stand-in reactor: endpoints are built to check their strings, never used."""


def _check_endpoint(description: str, where: str) -> None:
    """A UsageError naming the option and the string when it is no endpoint string."""
    from twisted.internet.endpoints import serverFromString

    if description.split(":", 1)[0].strip().lower() == "systemd":
        return  # names a socket systemd passes in; only there can it be checked
    try:
        serverFromString(_ParseOnly(), description)
    except Exception as e:
        reason = str(e) or type(e).__name__
        raise usage.UsageError(
            f"{where}: {description!r} is not a valid endpoint string ({reason}). "
            "For example: tcp:61613:interface=127.0.0.1, or "
            "ssl:61614:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem"
        ) from None


def _unavailable(error: OSError, interface: str, port: int, moved: str) -> str:
    """Why ``interface:port`` cannot be bound, and what to do instead (``moved``)."""
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"{interface} is not an address of this machine ({error.strerror}); "
            "use one of its addresses, e.g. interface=127.0.0.1"
        )
    if error.errno == errno.EADDRINUSE:
        hint = " (RabbitMQ uses it too)" if port in (61613, 15674) else ""
        return (
            f"{interface}:{port} is already in use{hint}; stop what uses it, "
            f"or move this listener, e.g. {moved}"
        )
    if error.errno == errno.EACCES:
        return (
            f"{interface}:{port} needs privileges this process does not have "
            f"(ports below 1024 do); use a higher port, e.g. {moved}"
        )
    return f"{interface}:{port} cannot be used ({error.strerror})"


def busy_listeners(config: BrokerConfig) -> list[str]:
    """
    One line for each ``--tcp``/``--ws``/``--admin`` listener whose address
    cannot be bound now (in use, or not allowed), saying what moves it.
    Checked before anything starts, so that every one is named at once.
    """
    lines = []
    for flag, field, example in (
        ("--tcp", "tcp_endpoints", 61614),
        ("--ws", "ws_endpoints", 15675),
        ("--admin", "admin_endpoints", 15671),
    ):
        for description in getattr(config, field):
            address = tcp_address(description)
            if address is None or not address[1].isdigit():
                continue  # not TCP: nothing to check
            # An ephemeral port (0) is never in use, but its interface may
            # not be this machine's.
            interface, port = address[0], int(address[1])
            family = socket.AF_INET6 if ":" in interface else socket.AF_INET
            probe = socket.socket(family, socket.SOCK_STREAM)
            try:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted does
                if description.split(":", 1)[0].strip().lower() == "reuseport":
                    # Other nodes share the port on purpose: as the endpoint does.
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind((interface, port))
            except OSError as e:
                moved = f"{flag} " + description.replace(f":{port}", f":{example}", 1)
                lines.append(f"{flag} {description}: " + _unavailable(e, interface, port, moved))
            finally:
                probe.close()
    return lines


def _checker(options: Options, description: str, sources: list[SettingValues]) -> object:
    """The checker ``--auth description`` names; a UsageError saying why not."""
    from stomptw.auth import make_checker

    where = origin_of("auth", *sources)
    try:
        checker = make_checker(description)
    except Exception as e:
        kind = description.split(":", 1)[0]
        raise usage.UsageError(f"{where} {kind}: {e}") from None
    if not any(options.supportsInterface(i) for i in checker.credentialInterfaces):
        raise usage.UsageError(
            f"{where} {description.split(':', 1)[0]}: its credentials cannot come "
            "from a STOMP CONNECT"
        )
    return checker


# The repeatable settings' handlers (usage.Options finds opt_* methods by name).
for _setting in _SETTINGS:
    if _setting.kind == LIST:
        setattr(Options, "opt_" + _setting.key.replace("-", "_"), _handler(_setting))
del _setting


def _command_line(options: usage.Options) -> SettingValues:
    """The settings given on the command line (not their defaults)."""
    values: dict[str, object] = {}
    for s in _SETTINGS:
        if s.kind == LIST and s.off_key and options[s.off_key]:
            if options[s.key]:
                raise ConfigError(f"{s.off} and {s.flag} contradict each other")
            values[s.key] = []
        elif s.kind == LIST:
            if options[s.key]:
                values[s.key] = list(options[s.key])
        elif s.kind == SWITCH:
            if options[s.key]:
                values[s.key] = True
        elif options[s.key] is not None:
            values[s.key] = options[s.key]
    return SettingValues(values)


def _sources(options: usage.Options) -> list[SettingValues]:
    config_file = getattr(options, "config_file", None)
    return [config_file, _command_line(options)] if config_file else [_command_line(options)]


def config_from_options(options: usage.Options) -> BrokerConfig:
    """
    Build a :class:`BrokerConfig` from parsed :class:`Options`: the defaults,
    overridden by the ``--config`` file's settings (read by
    :meth:`Options.postOptions`), overridden by the command line's. Raises
    :class:`~stomptw.configfile.ConfigError` naming the option (or file and key)
    of a bad value.
    """
    return config_from_values(*_sources(options))


def makeService(options: Options, reactor=None) -> IService:
    """
    Called by twistd: the broker service for these options.

    :param reactor: the reactor to listen and schedule with; the global one
        by default.
    """
    from stomptw.service import makeService as make

    if reactor is None:
        # Under twistd: every busy port named at once, before the store is touched.
        busy = busy_listeners(options.config)
        if busy:
            sys.stderr.write(
                "stomptw cannot start: "
                + ("a listener's address is" if len(busy) == 1 else "some listeners' addresses are")
                + " not available.\n  "
                + "\n  ".join(busy)
                + "\n"
            )
            raise SystemExit(1)
    try:
        service = make(
            options.config, reactor, admin_token=options.admin_token, checkers=options.checkers
        )
    except PermissionsError as e:
        if reactor is not None:
            raise
        raise SystemExit(f"stomptw cannot start: --permissions {e}") from None
    service.freeze_heap_when_ready = not options["no-gc-freeze"]
    service.reload_on_sighup = True
    service.exit_on_start_error = True
    counters = service.broker.counters
    heap_trim_service(reactor, lambda: counters.sessions_ended).setServiceParent(service)
    return service
