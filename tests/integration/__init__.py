"""Tests against the real parts: the embedded broker, PostgreSQL, subprocesses."""
