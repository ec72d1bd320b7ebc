"""sockwork's conformance suite, run against this plugin's dispatcher on every transport."""

from sockwork.conformance import *  # noqa: F403
