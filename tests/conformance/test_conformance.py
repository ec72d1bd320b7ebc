"""Every registered transport x every registered dispatcher keeps the core promises.

The suite itself ships with sockwork (sockwork.conformance) so that plugin
authors run the very same tests; this is the one line they write too.
"""

from sockwork.conformance import *  # noqa: F403
