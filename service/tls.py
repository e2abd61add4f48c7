"""The one trust configuration of every connection the service opens to another party.

The EHR's FHIR server, its authorization server (SMART discovery, tokens, id_token keys),
a CDS client's JWK Set and the administrator's connection test are all reached with
:func:`context`: the system's trust store, where a hospital installs its own CA (Debian:
``update-ca-certificates``), or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``. httpx's default is
certifi's public bundle instead, so a hospital CA trusted for FHIR writes failed the SMART
launch of the same EHR. The clients get it through the transports of
:mod:`service.outbound`, which also check where they connect.
"""

from __future__ import annotations

import ssl
from functools import lru_cache


@lru_cache(maxsize=1)
def context() -> ssl.SSLContext:
    """Built once: loading the trust store costs about 0.1 s each time."""
    return ssl.create_default_context()
