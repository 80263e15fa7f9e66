"""
Small Deferred helpers for the paths that wait on stores: :func:`both`,
which joins two syncs without gathering when one has already fired.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["both"]


def both(first: defer.Deferred, second: defer.Deferred) -> defer.Deferred:
    """
    A Deferred that fires once ``first`` and ``second`` have, failing with
    the first failure; one already fired with success is not waited for
    (so the common case, nothing pending, costs no gathering).
    """
    for done, other in ((first, second), (second, first)):
        if done.called and not isinstance(done.result, Failure):
            return other
    gathered = defer.gatherResults([first, second], consumeErrors=True)
    return gathered.addErrback(lambda failure: failure.value.subFailure)
