"""Tests of one piece of logic each: no broker, no database; seconds in all."""
