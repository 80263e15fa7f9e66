# stomptw's endpoint strings: mtls:, TLS that requires client certificates.
# Lazy: stomptw.mtls is imported only when such an endpoint is made.
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """mtls:PORT:privateKey=...:certKey=...:caCerts=CA.pem[:interface=...]"""

    prefix = "mtls"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from stomptw.mtls import mtls_endpoint

        return mtls_endpoint(reactor, *args, **kwargs)


mtls = MutualTLSServerParser()
