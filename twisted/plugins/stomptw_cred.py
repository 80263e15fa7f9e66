# stomptw's checkers for --auth (twisted.cred.strcred): lazy factories that
# import their module only when a checker is made.
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from stomptw.credentials import ICertificateCredentials


@implementer(ICheckerFactory, IPlugin)
class UsersFileCheckerFactory:
    """--auth users:FILE: a stomptw users file of argon2id password hashes."""

    authType = "users"
    authHelp = (
        "Checks logins against a stomptw users file: user names with argon2id "
        "password hashes, groups and tags, written by the stomptw-users command "
        "(stomptw-users add FILE NAME). The file is re-read on SIGHUP."
    )
    argStringFormat = "The path of the users file."
    credentialInterfaces = (IUsernamePassword,)

    def generateChecker(self, argstring=""):
        from stomptw.users import UsersFileChecker

        if not argstring:
            raise ValueError("users needs the path of a users file: --auth users:FILE")
        return UsersFileChecker(argstring)


users = UsersFileCheckerFactory()


@implementer(ICheckerFactory, IPlugin)
class JwtCheckerFactory:
    """--auth jwt:...: JWT bearer tokens sent as CONNECT's passcode."""

    authType = "jwt"
    authHelp = (
        "Checks a JWT sent as CONNECT's passcode (signature, exp, nbf, iss, aud); the\n"
        "user is its sub claim, and the session ends when it expires. Options, ':'-separated:\n"
        "key=FILE (PEM public key, JWKS JSON or HMAC secret) or jwks=URL (fetched and cached),\n"
        "algorithms=RS256[,ES256...], issuer=ISS, audience=AUD, username-claim=sub,\n"
        "scope-prefix=stomptw. (scopes like stomptw.read:/topic/chat.* grant permissions),\n"
        "leeway=SECONDS, refresh=SECONDS (JWKS), timeout=SECONDS (JWKS)."
    )
    argStringFormat = "key=FILE or jwks=URL, then issuer=, audience=, algorithms=, ..."
    credentialInterfaces = (IUsernamePassword,)

    def generateChecker(self, argstring=""):
        from stomptw.tokens import jwt_checker

        return jwt_checker(argstring)


jwt = JwtCheckerFactory()


@implementer(ICheckerFactory, IPlugin)
class HttpCheckerFactory:
    """--auth http:...: an HTTP service speaking rabbitmq_auth_backend_http's protocol."""

    authType = "http"
    authHelp = (
        "Asks an HTTP service, with the requests of RabbitMQ's rabbitmq_auth_backend_http,\n"
        "whether a login is valid (user_path) and what the user may do (vhost_path,\n"
        "resource_path, topic_path); answers allow [tags...] or deny. Options, ':'-separated:\n"
        "user_path=URL (required), vhost_path=URL, resource_path=URL, topic_path=URL,\n"
        "method=get|post (get), timeout=SECONDS (5), cache_ttl=SECONDS (15)."
    )
    argStringFormat = "user_path=URL[:vhost_path=URL:resource_path=URL:topic_path=URL:...]"
    credentialInterfaces = (IUsernamePassword,)

    def generateChecker(self, argstring=""):
        from stomptw.httpauth import http_checker

        return http_checker(argstring)


http = HttpCheckerFactory()


@implementer(ICheckerFactory, IPlugin)
class CertificateCheckerFactory:
    """--auth cert: TLS client certificates (mtls: listeners) log in as their subject."""

    authType = "cert"
    authHelp = (
        "On mtls: listeners (TLS that requires client certificates signed by caCerts=), a\n"
        "CONNECT without login logs in as the certificate's common name, or with\n"
        "from=subject as its whole subject (RabbitMQ's ssl_cert_login)."
    )
    argStringFormat = "Nothing, or from=cn|subject."
    credentialInterfaces = (ICertificateCredentials,)

    def generateChecker(self, argstring=""):
        from stomptw.mtls import CertificateChecker

        name_from = argstring.partition("from=")[2] if argstring else "cn"
        if argstring and not argstring.startswith("from="):
            raise ValueError(f"expected from=cn or from=subject, got {argstring!r}")
        return CertificateChecker(name_from)


cert = CertificateCheckerFactory()
