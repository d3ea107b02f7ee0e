"""Secrets out of the local runtime's logs: the signatures in callback URLs and presigned
URLs, and the tokens in private jobs' play URLs. (The real CE gateway, queue-worker and
of-watchdog log them whole: docs/deploy.md.)"""

from __future__ import annotations

import re

# Query parameters that carry a secret: split's callback signature, S3 presigned URLs', a
# signed link (vtp.links), a credential put in a URL by mistake.
_SECRET_PARAM = re.compile(
    r"(?i)(?P<name>[?&](?:sig|token|link|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"signature|awsaccesskeyid)=)[^&\s\"']*"
)
# A play URL's token is a path segment (vtp_relay.play): `/play/<token>/<job>/<file>`.
_PLAY_TOKEN = re.compile(r"(?P<name>/play/)[^/?#\s\"']+")


def redact(text: str) -> str:
    """`text` with the values of secret-bearing query parameters, and play tokens, replaced."""
    return _PLAY_TOKEN.sub(r"\g<name><redacted>", _SECRET_PARAM.sub(r"\g<name><redacted>", text))
