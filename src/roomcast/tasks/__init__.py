"""Tasks: tracked units of background work whose progress, stop and result reach subscribers.

``model`` is the pure value and its transition table, ``store`` the durable-storage contract,
``store_sqlite`` the default implementation (one process per file) and ``store_redis`` the
one every node of a ``--redis`` hub shares. ``service`` is the public face; ``_live`` orders
each task's writes and publications, ``_nodes`` holds a node's lease and forwards stops to
the node running a task's producer. ``poller`` follows upstream jobs.
"""
