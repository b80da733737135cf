"""Secrets in URIs: hidden wherever a URI is written down.

Tracking URIs and data paths may carry credentials (`s3://KEY:SECRET@bucket/set`, a signed
query); params, manifests, logs and printed reports get the redacted form, so a secret never
ends up in the tracking store, a data set or a terminal. It lives apart from both tracking and
data because both write URIs and neither may import the other's dependencies.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"([A-Za-z][\w+.-]*://[^/@\s:]*):[^/@\s]+@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:token|access_token|api_key|key|secret|password|sig|signature|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&\s]+"
)


def redact(text: str) -> str:
    """`text` with passwords in URIs (user:secret@host) and secret query parameters as ***."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))
