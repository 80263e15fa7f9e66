# stomptw's checkers for --auth (twisted.cred.strcred): lazy factories that
# import their module only when a checker is made.
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from stomptw.credentials import ICertificateCredentials


@implementer(ICheckerFactory, IPlugin)
class LazyCheckerFactory:
    """An --auth kind whose checker is made by MODULE.FUNCTION(argstring), imported then."""

    def __init__(self, authType, authHelp, argStringFormat, credentialInterfaces, maker):
        self.authType = authType
        self.authHelp = authHelp
        self.argStringFormat = argStringFormat
        self.credentialInterfaces = credentialInterfaces
        self._maker = maker

    def generateChecker(self, argstring=""):
        from importlib import import_module

        module, _, function = self._maker.rpartition(".")
        return getattr(import_module(module), function)(argstring)


users = LazyCheckerFactory(
    "users",
    (
        "Checks logins against a stomptw users file: user names with argon2id "
        "password hashes, groups and tags, written by the stomptw-users command "
        "(stomptw-users add FILE NAME). The file is re-read on SIGHUP."
    ),
    "The path of the users file.",
    (IUsernamePassword,),
    "stomptw.users.users_checker",
)

jwt = LazyCheckerFactory(
    "jwt",
    (
        "Checks a JWT sent as CONNECT's passcode (signature, exp, nbf, iss, aud); the\n"
        "user is its sub claim, and the session ends when it expires. Options, ':'-separated:\n"
        "key=FILE (PEM public key, JWKS JSON or HMAC secret) or jwks=URL (fetched and cached),\n"
        "algorithms=RS256[,ES256...], issuer=ISS, audience=AUD, username-claim=sub,\n"
        "scope-prefix=stomptw. (scopes like stomptw.read:/topic/chat.* grant permissions),\n"
        "leeway=SECONDS, refresh=SECONDS (JWKS), timeout=SECONDS (JWKS)."
    ),
    "key=FILE or jwks=URL, then issuer=, audience=, algorithms=, ...",
    (IUsernamePassword,),
    "stomptw.tokens.jwt_checker",
)

http = LazyCheckerFactory(
    "http",
    (
        "Asks an HTTP service, with the requests of RabbitMQ's rabbitmq_auth_backend_http,\n"
        "whether a login is valid (user_path) and what the user may do (vhost_path,\n"
        "resource_path, topic_path); answers allow [tags...] or deny. Options, ':'-separated:\n"
        "user_path=URL (required), vhost_path=URL, resource_path=URL, topic_path=URL,\n"
        "method=get|post (get), timeout=SECONDS (5), cache_ttl=SECONDS (15)."
    ),
    "user_path=URL[:vhost_path=URL:resource_path=URL:topic_path=URL:...]",
    (IUsernamePassword,),
    "stomptw.httpauth.http_checker",
)

cert = LazyCheckerFactory(
    "cert",
    (
        "On mtls: listeners (TLS that requires client certificates signed by caCerts=), a\n"
        "CONNECT without login logs in as the certificate's common name, or with\n"
        "from=subject as its whole subject (RabbitMQ's ssl_cert_login)."
    ),
    "Nothing, or from=cn|subject.",
    (ICertificateCredentials,),
    "stomptw.mtls.cert_checker",
)
