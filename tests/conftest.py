"""Settings shared by every test directory."""

from hypothesis import settings

# Same examples on every run, so CI cannot fail by luck; `--hypothesis-profile explore` draws
# fresh ones to hunt for new failures.
# No deadline: the first example of a test pays for imports and lazy initialisation.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile("deterministic")
