"""
Cluster mode: several stomptw nodes acting as one broker, tied together by
a message engine behind :class:`~stomptw.interfaces.IClusterBus`.

What spans the cluster so far: topics (each message published on any node
reaches every subscriber on every node, once). Queues are still each node's
own. docs/cluster.md says what is and is not done.

- :mod:`stomptw.cluster.settings`: ``--cluster``, ``--cluster-password-file``,
  ``--node-id``, and reading a Redis URL;
- :mod:`stomptw.cluster.codec`: a topic message as one bytes payload;
- :mod:`stomptw.cluster.probe`: the check at startup that Redis can be joined;
- :mod:`stomptw.cluster.node`: this node's part, a service between the broker
  and the bus;
- :mod:`stomptw.cluster.redisbus`: the bus on Redis pub/sub (txredisapi),
  each of its connections kept up by :mod:`stomptw.cluster.redislink`.

Only :mod:`stomptw.cluster.redisbus` and :mod:`stomptw.cluster.redislink`
import a Redis client, and only :func:`stomptw.cluster.node.join_cluster`
imports them, when ``--cluster`` is set: a single node never loads it.
"""
