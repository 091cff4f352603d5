"""Tasks: tracked units of background work whose progress, stop and result reach subscribers.

``model`` is the pure value and its transition table, ``store`` the durable-storage contract,
``store_sqlite`` the default implementation. Nothing here imports the hub or a transport;
publishing changes is the job of the service built on top.
"""
