"""An Envoy external-authorization client whose message classes nobody here wrote: the
`envoy-data-plane` package (betterproto2, generated from envoyproxy/data-plane-api) over
grpclib. Sends one Check and prints the answer as JSON.

    python ext_authz_check.py HOST PORT REQUEST_JSON
REQUEST_JSON: {"method", "path", "host", "scheme", "headers": {name: value}, "body"?}
"""

import asyncio
import json
import sys

from grpclib.client import Channel
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextRequest,
    AuthorizationAsyncStub,
    CheckRequest,
)


def options(values):
    return {option.header.key: option.header.value for option in values or []}


async def main():
    host, port, spec = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    http = AttributeContextHttpRequest(
        method=spec["method"],
        path=spec["path"],
        host=spec["host"],
        scheme=spec.get("scheme", "https"),
        headers=spec["headers"],
        raw_body=spec.get("body", "").encode(),
    )
    request = CheckRequest(attributes=AttributeContext(request=AttributeContextRequest(http=http)))
    channel = Channel(host, port)
    try:
        response = await AuthorizationAsyncStub(channel).check(request, timeout=10)
    finally:
        channel.close()
    answer = {"code": response.status.code if response.status else 0}
    if response.ok_response is not None:
        answer["ok_headers"] = options(response.ok_response.headers)
        answer["headers_to_remove"] = list(response.ok_response.headers_to_remove)
    if response.denied_response is not None:
        denied = response.denied_response
        answer["denied_status"] = int(denied.status.code) if denied.status else 0
        answer["denied_headers"] = options(denied.headers)
        answer["denied_body"] = denied.body
    print(json.dumps(answer))


asyncio.run(main())
