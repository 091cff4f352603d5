"""The node bus: how the processes serving one hub reach each other (DESIGN §6).

``base`` holds the contract and ``LocalCluster`` (one process, no Redis); ``redis`` the bus
over Redis pub/sub that ``roomcast serve --redis`` uses.
"""
