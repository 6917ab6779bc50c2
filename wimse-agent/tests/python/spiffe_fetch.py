"""Fetches an X.509-SVID and the X.509 bundles with the PyPI `spiffe` package (gRPC C core
underneath), as any Python workload would; prints the outcome as JSON.

    spiffe_fetch.py unix:///path/to/agent.sock
"""
import json
import sys

import grpc
from spiffe import WorkloadApiClient


def main(endpoint):
    result = {}
    try:
        with WorkloadApiClient(endpoint, default_timeout=10) as client:
            svid = client.fetch_x509_svid()
            result["spiffe_id"] = str(svid.spiffe_id)
            result["chain"] = len(svid.cert_chain)
            bundles = client.fetch_x509_bundles()
            result["trust_domains"] = sorted(str(b.trust_domain) for b in bundles.bundles)
            result["authorities"] = sum(len(b.x509_authorities) for b in bundles.bundles)
    except Exception as error:  # the outcome is the test's to judge
        result["error"] = type(error).__name__
        cause = error.__cause__
        if isinstance(cause, grpc.Call):
            result["code"] = cause.code().name
            result["details"] = cause.details()
        else:
            result["details"] = str(error)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
