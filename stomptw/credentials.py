"""
Credentials a STOMP login may present besides a name and password: a TLS
client certificate. Kept apart (and light) so that the ``--auth`` plugins
can name the interface without importing the broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.cred.credentials import ICredentials
from zope.interface import Attribute, implementer

__all__ = ["CertificateCredentials", "ICertificateCredentials", "certificate_of"]


class ICertificateCredentials(ICredentials):
    """A TLS client certificate that the transport verified."""

    subject = Attribute("The certificate's subject, as a string (``CN=alice,O=Example``).")
    common_name = Attribute("The subject's common name (CN), or empty.")


@implementer(ICertificateCredentials)
@dataclass(frozen=True)
class CertificateCredentials:
    """The verified client certificate of a TLS connection."""

    subject: str
    common_name: str = ""


def certificate_of(transport: Any) -> CertificateCredentials | None:
    """
    The client certificate a TLS ``transport`` verified, as credentials; None
    on a transport without TLS or without a client certificate.
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        x509 = get()
    except Exception:
        return None
    if x509 is None:
        return None
    parts = [
        (name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
        for name, value in x509.get_subject().get_components()
    ]
    subject = ",".join(f"{name}={_rdn_escape(value)}" for name, value in parts)
    common = next((value for name, value in parts if name == "CN"), "")
    return CertificateCredentials(subject, common)


def _rdn_escape(value: str) -> str:
    """Escape an attribute value as RFC 4514 does, so that no two subjects read alike."""
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out
