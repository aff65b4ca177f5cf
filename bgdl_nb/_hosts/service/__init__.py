"""The transfer service: background sessions' engines in a process of their own.

``server`` is the process (``bgdl service run``); ``client`` is the kernel side, a host
with the same surface as the in-process thread host; ``protocol`` is what they say to
each other over a Unix socket only their user can open.
"""
