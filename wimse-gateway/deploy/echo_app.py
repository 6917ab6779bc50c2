"""A service that links no WIMSE library, behind a proxy and the wimse gateway.

It answers every request with JSON of what it received (method, path, header fields, body)
and prints the identity the gateway verified for it. `GET /hop` also calls the URL in
`NEXT_HOP` (through `HTTP_PROXY`, the gateway's egress proxy, which signs the call),
passing on the Txn-Token it received, and returns that answer under "next".

    python3 echo_app.py PORT
"""

import json
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import os


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        headers = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        print(
            "python app: %s %s caller=%s proof=%s txn=%s"
            % (
                self.command,
                self.path,
                self.headers.get("X-Wimse-Caller", "-"),
                self.headers.get("X-Wimse-Proof", "-"),
                self.headers.get("X-Wimse-Txn", "-"),
            ),
            flush=True,
        )
        echo = {"method": self.command, "path": self.path, "headers": headers, "body": body}
        if self.path == "/hop" and os.environ.get("NEXT_HOP"):
            request = urllib.request.Request(os.environ["NEXT_HOP"])
            if self.headers.get("Txn-Token"):
                request.add_header("Txn-Token", self.headers["Txn-Token"])
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    echo["next"] = {"status": response.status, "body": response.read().decode()}
            except urllib.error.HTTPError as error:
                echo["next"] = {"status": error.code, "body": error.read().decode()}
        data = json.dumps(echo).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo)
    print("python app listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()
