"""JSON replies: one encoding for every reply the relay writes, success or refusal.

ASCII-only JSON (``ensure_ascii``): whatever text a reply carries, the bytes are valid
UTF-8 and can never fail to encode (a refusal may quote a client's key name). Every
reply says ``Cache-Control: no-store`` (docs/relay.md, section 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse


class JsonReply(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def reply(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> JsonReply:
    return JsonReply(dict(body), status_code=status, headers={**(headers or {}), "Cache-Control": "no-store"})
