"""The pure sharing core: what is shared with whom, decided without I/O.

``decide`` turns an event, the agreements in force and the subject's consent history
into one decision per candidate recipient; ``pseudonymise`` and ``retraction`` are its
helpers, ``explain`` says in words why. Nothing here talks to Kafka or a database, so
it is unit-tested on its own; the processor (``accord.processor``) is the shell.
"""
