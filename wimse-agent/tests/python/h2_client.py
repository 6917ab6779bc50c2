"""A raw HTTP/2 gRPC client (the `h2` package) for the agent's tests: it sends whatever
`:authority` it is given, as grpc-java (the socket's raw path) or grpc-swift (percent-encoded)
would, with the `hpack` encoder's Huffman coding and incremental indexing (a repeated value goes
out as a dynamic-table reference), optionally re-framed as HEADERS(PADDED) + CONTINUATIONs.

    h2_client.py authorities SOCKET [--reframe] AUTHORITY...

prints one JSON result per call, all on one connection (see `Client.call`).
"""
import json
import socket
import sys
import urllib.parse

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame
from spiffe._proto import workload_pb2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def reframe(data):
    """Splits each HEADERS frame of `data` into HEADERS(PADDED) and two CONTINUATIONs."""
    out, i = b"", 0
    if data.startswith(PREFACE):
        out, i = PREFACE, len(PREFACE)
    while i < len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[i:i + 9]))
        frame.parse_body(memoryview(data[i + 9:i + 9 + length]))
        i += 9 + length
        if isinstance(frame, HeadersFrame) and len(frame.data) > 4:
            block = frame.data
            a, b = len(block) // 3, 2 * len(block) // 3
            flags = [f for f in frame.flags if f == "END_STREAM"] + ["PADDED"]
            out += HeadersFrame(frame.stream_id, data=block[:a], pad_length=9, flags=flags).serialize()
            out += ContinuationFrame(frame.stream_id, data=block[a:b]).serialize()
            out += ContinuationFrame(frame.stream_id, data=block[b:], flags=["END_HEADERS"]).serialize()
        else:
            out += frame.serialize()
    return out


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def wait_for_server_settings(sock):
    """Reads the agent's first frame (its SETTINGS): the agent has accepted, and attested, the
    connection. The frame is consumed here; a later `Client` does not need it."""
    header = read_exactly(sock, 9)
    read_exactly(sock, int.from_bytes(header[:3], "big"))
    if header[3] != 0x4:
        raise ValueError(f"the server's first frame has type {header[3]}")


class Client:
    """One HTTP/2 connection over `sock`, making unary-style calls to server-streaming methods:
    the first message is taken and the stream cancelled."""

    def __init__(self, sock, reframe_headers=False):
        self.sock = sock
        self.reframe = reframe_headers
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.flush()
        self.bodies = {}
        self.ended = {}

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(reframe(data) if self.reframe else data)

    def call(self, authority, method="FetchX509SVID"):
        """The first answer of a call: {"status": "0", "spiffe_ids": [...]} for an X.509-SVID
        (the stream is then cancelled), {"status": code, "message": ...} for a gRPC error,
        {"reset": code} for RST_STREAM, {"goaway": code} or {"closed": true}."""
        stream = self.open(authority, method)
        result = self.next(stream, method)
        if result.get("status") == "0":
            self.conn.reset_stream(stream)
            self.flush()
        return result

    def open(self, authority, method="FetchX509SVID"):
        """Starts a call; its messages come from `next`."""
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [
            (":method", "POST"), (":scheme", "http"), (":path", "/SpiffeWorkloadAPI/" + method),
            (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers"),
            ("workload.spiffe.io", "true"),
        ])
        self.conn.send_data(stream, b"\x00\x00\x00\x00\x00", end_stream=True)
        self.flush()
        self.bodies[stream] = b""
        return stream

    def next(self, stream, method="FetchX509SVID"):
        """The next message of `stream`, or how it ended (see `call`)."""
        while True:
            body = self.bodies[stream]
            if len(body) >= 5 and len(body) >= 5 + int.from_bytes(body[1:5], "big"):
                end = 5 + int.from_bytes(body[1:5], "big")
                self.bodies[stream] = body[end:]
                return message_result(method, body[5:end])
            if self.ended.get(stream):
                return self.ended[stream]
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return {"closed": True}
            for event in self.conn.receive_data(chunk):
                if isinstance(event, h2.events.ConnectionTerminated):
                    return {"goaway": int(event.error_code)}
                sid = getattr(event, "stream_id", None)
                if sid not in self.bodies:
                    continue
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    self.bodies[sid] += event.data
                elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers = dict(event.headers)
                    if b"grpc-status" in headers:
                        message = urllib.parse.unquote(headers.get(b"grpc-message", b"").decode())
                        self.ended[sid] = {"status": headers[b"grpc-status"].decode(), "message": message}
                elif isinstance(event, h2.events.StreamReset):
                    self.ended[sid] = {"reset": int(event.error_code)}
            self.flush()


def message_result(method, message):
    if method == "FetchX509SVID":
        response = workload_pb2.X509SVIDResponse.FromString(message)
        return {"status": "0", "spiffe_ids": [svid.spiffe_id for svid in response.svids]}
    return {"status": "0"}


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(path)
    return sock


def main(args):
    if args[0] == "authorities":
        path, rest = args[1], args[2:]
        reframe_headers = rest[:1] == ["--reframe"]
        client = Client(connect(path), reframe_headers)
        print(json.dumps([client.call(a) for a in rest[int(reframe_headers):]]))
    else:
        raise SystemExit(f"unknown command {args[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
