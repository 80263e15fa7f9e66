# The twistd dropin for stomptw: a single lazy ServiceMaker that names
# stomptw.tap by string, so that listing plugins imports nothing heavy.
from twisted.application.service import ServiceMaker

stomptw = ServiceMaker(
    "stomptw",
    "stomptw.tap",
    "A STOMP 1.0/1.1/1.2 message broker over TCP and WebSocket.",
    "stomptw",
)
