# The twistd dropin for stomptw: a lazy ServiceMaker that names stomptw.tap
# by string, so that listing plugins imports nothing heavy, and the
# reuseport: endpoint string (a small module of its own).
from twisted.application.service import ServiceMaker

from stomptw.reuseport import ReusePortParser

stomptw = ServiceMaker(
    "stomptw",
    "stomptw.tap",
    "A STOMP 1.0/1.1/1.2 message broker over TCP and WebSocket.",
    "stomptw",
)

reuseport = ReusePortParser()
