"""The conformance suite in sockwork's own run: transports with connection stages need the loop that runs them."""

from __future__ import annotations

from typing import Any

import pytest
from sockwork_stages import STAGES_NOT_RUN


@pytest.fixture(autouse=True)
def stages_are_run(sockwork_transport_name: str, sockwork_loopback: Any, stages_run: bool) -> None:
    """Skip (saying why) a transport with stages (tls, the PROXY option) while the Server does not run them."""
    staged = getattr(sockwork_loopback.options, "proxy_protocol", None) or sockwork_transport_name == "tls"
    if staged and not stages_run:
        pytest.skip(STAGES_NOT_RUN)
