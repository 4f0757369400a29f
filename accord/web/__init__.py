"""What Accord serves over HTTP: the citizens' consent API (``consent_api``)."""
