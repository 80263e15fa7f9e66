"""
TLS listeners that require client certificates: the ``mtls:`` endpoint.

Twisted's ``ssl:`` server endpoint cannot ask clients for a certificate, so
``mtls:`` is ``ssl:`` plus ``caCerts=FILE`` (PEM, one or more CA
certificates): a client must present a certificate signed by one of them, or
the TLS handshake fails. With ``--auth cert`` a session that sends no
``login`` logs in as its certificate's subject, as RabbitMQ's
``ssl_cert_login`` does::

    --tcp mtls:61614:interface=0.0.0.0:privateKey=key.pem:certKey=cert.pem:caCerts=ca.pem
"""

from __future__ import annotations

import re
from typing import Any

from twisted.cred import checkers, error
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.python.filepath import FilePath
from zope.interface import implementer

from stomptw.auth import Identity
from stomptw.credentials import ICertificateCredentials

__all__ = ["CertificateChecker", "cert_checker", "mtls_endpoint"]

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def mtls_endpoint(
    reactor: Any,
    port: str,
    privateKey: str,  # noqa: N803 (the ssl: endpoint's spelling)
    certKey: str | None = None,  # noqa: N803
    caCerts: str | None = None,  # noqa: N803
    interface: str = "",
    backlog: str = "50",
) -> SSL4ServerEndpoint:
    """The endpoint of an ``mtls:`` string (see the module's documentation)."""
    from twisted.internet import ssl

    if not caCerts:
        raise ValueError("mtls: needs caCerts=FILE, the CA certificates clients must be signed by")
    cert_pem = FilePath(certKey or privateKey).getContent()
    key_pem = FilePath(privateKey).getContent()
    private = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    found = _PEM.findall(FilePath(caCerts).getContent())
    authorities = [ssl.Certificate.loadPEM(pem).original for pem in found]
    if not authorities:
        raise ValueError(f"{caCerts} holds no PEM certificate")
    options = ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        verify=True,
        requireCertificate=True,
        caCerts=authorities,
    )
    return SSL4ServerEndpoint(reactor, int(port), options, int(backlog), interface)


@implementer(checkers.ICredentialsChecker)
class CertificateChecker:
    """
    Logs in a verified client certificate as its common name (``from=cn``,
    the default) or its whole subject (``from=subject``).
    """

    credentialInterfaces = (ICertificateCredentials,)

    def __init__(self, name_from: str = "cn") -> None:
        if name_from not in ("cn", "subject"):
            raise ValueError(f"from must be cn or subject, got {name_from!r}")
        self.name_from = name_from

    def requestAvatarId(self, creds: Any) -> defer.Deferred:  # noqa: N802
        """See :class:`twisted.cred.checkers.ICredentialsChecker`."""
        name = creds.common_name if self.name_from == "cn" else creds.subject
        if not name:
            return defer.fail(error.UnauthorizedLogin("the certificate has no common name"))
        return defer.succeed(Identity(name))


def cert_checker(argstring: str) -> CertificateChecker:
    """The checker of ``--auth cert`` (``cert:from=cn`` or ``cert:from=subject``)."""
    if argstring and not argstring.startswith("from="):
        raise ValueError(f"expected from=cn or from=subject, got {argstring!r}")
    return CertificateChecker(argstring.partition("from=")[2] if argstring else "cn")
