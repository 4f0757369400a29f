"""The foundation every other part of Accord stands on.

Settings, Kafka client factories, topic names, logging, the database engine, the
``accord.*`` header names and the one delivery error. It imports nothing of Accord's
but ``schemas/``, so anything may import it and it never sees the layers above.
"""
