"""Where an engine runs. ``thread`` hosts it on an event loop in a thread of this
process (default sessions, and background sessions with ``use_service=False``);
``service`` hosts background sessions' engines in the transfer service, a process of
their own, with a client here that offers the same surface to :class:`~bgdl_nb.Session`."""
