"""Over-the-air model updates (the fleet-to-device half of PROTOCOL.md).

envelope.py   signed envelopes, trusted keys
manifest.py   manifest and command schemas
policy.py     the checks that need the device's state: targets, clock, replay, versions, limits
store.py      the crash-safe model store and its active pointers
transfer.py   MQTT-chunk and URL downloads, resumable
slot.py       hot swap and the A/B split
agent.py      the update state machine, probation and rollback, status records
"""
