"""Where an engine runs. ``thread`` hosts it on an event loop in a thread of this
process; the transfer service will host the same engine in another process."""
