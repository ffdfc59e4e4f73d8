"""Check requests against Twilio's OpenAPI description with openapi-core, a validator
independent of this project. Reads a JSON list of requests on stdin, prints one line per
request: "ok" or "invalid: <reason>"."""
import json
import sys
from urllib.parse import parse_qsl

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest

spec = OpenAPI.from_file_path(sys.argv[1])
for r in json.load(sys.stdin):
    request = MockRequest(
        "https://api.twilio.com",
        r["method"].lower(),
        r["path"],
        args=dict(parse_qsl(r["query"])),
        headers={"Authorization": r["authorization"]},
        data=r["body"].encode() if r["body"] else None,
        content_type=r["content_type"] or "application/x-www-form-urlencoded",
    )
    try:
        spec.validate_request(request)
        print("ok")
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        cause = e.__cause__ or e
        print("invalid:", type(e).__name__, str(cause).replace("\n", " ")[:300])
