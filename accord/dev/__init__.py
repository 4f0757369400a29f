"""The developer's stack: the embedded broker, the demo, and draining a topic."""
