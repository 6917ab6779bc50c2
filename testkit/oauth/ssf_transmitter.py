"""A Shared Signals transmitter nobody here wrote the JOSE of: Security Event Tokens (RFC 8417)
signed with joserfc, served on Flask.

  ssf_transmitter.py CONFIG.json

CONFIG: issuer, port, streams (a list of {"token", "audience"}: each receiver polls its own stream
with its bearer token, so every replica follows every event).

  GET  /jwks                     the transmitter's public keys
  POST /emit                     {"event", "format", "subject", "kid"?, "sign_with"?}: a SET for each
                                 stream (sign_with "rogue" signs with a key not in /jwks); answers
                                 {"jtis": [...]}; with "push_to" it is also pushed there
                                 (RFC 8935) and the push's status and body are answered
  POST /poll                     RFC 8936 poll, bearer-authenticated: acks removed, setErrs kept
  GET  /errors                   the setErrs received, by stream token
"""

import json
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request


def main(config_path):
    from flask import Flask, jsonify, request
    from joserfc import jwt
    from joserfc.jwk import ECKey

    with open(config_path) as f:
        config = json.load(f)
    key = ECKey.generate_key("P-256", parameters={"kid": "ssf-1", "alg": "ES256"})
    rogue = ECKey.generate_key("P-256", parameters={"kid": "ssf-1", "alg": "ES256"})
    lock = threading.Lock()
    queues = {stream["token"]: {} for stream in config["streams"]}
    audiences = {stream["token"]: stream["audience"] for stream in config["streams"]}
    errors = {stream["token"]: {} for stream in config["streams"]}
    app = Flask(__name__)

    def subject_identifier(fmt, subject):
        if fmt == "uri":
            return {"format": "uri", "uri": subject}
        if fmt == "email":
            return {"format": "email", "email": subject}
        if fmt == "iss_sub":
            return {"format": "iss_sub", "iss": config["issuer"], "sub": subject}
        return {"format": "opaque", "id": subject}

    def make_set(audience, event):
        jti = secrets.token_urlsafe(12)
        now = int(time.time())
        claims = {
            "iss": config["issuer"],
            "aud": audience,
            "iat": now,
            "jti": jti,
            "sub_id": subject_identifier(event.get("format", "uri"), event["subject"]),
            "events": {event["event"]: {"event_timestamp": now}},
        }
        signer = rogue if event.get("sign_with") == "rogue" else key
        header = {"alg": "ES256", "typ": "secevent+jwt", "kid": "ssf-1"}
        return jti, jwt.encode(header, claims, signer)

    @app.get("/jwks")
    def jwks():
        return jsonify({"keys": [key.as_dict(private=False)]})

    @app.post("/emit")
    def emit():
        event = request.get_json()
        jtis = []
        pushed = None
        for token, queue in queues.items():
            jti, token_set = make_set(audiences[token], event)
            with lock:
                queue[jti] = token_set
            jtis.append(jti)
            if event.get("push_to"):
                req = urllib.request.Request(
                    event["push_to"],
                    data=token_set.encode(),
                    headers={"Content-Type": "application/secevent+jwt"},
                    method="POST",
                )
                try:
                    with urllib.request.urlopen(req, timeout=10) as answer:
                        pushed = {"status": answer.status, "body": answer.read().decode()}
                except urllib.error.HTTPError as error:
                    pushed = {"status": error.code, "body": error.read().decode()}
                break
        return jsonify({"jtis": jtis, "pushed": pushed})

    @app.post("/poll")
    def poll():
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if token not in queues:
            return jsonify({"err": "authentication_failed"}), 401
        body = request.get_json()
        with lock:
            for jti in body.get("ack", []):
                queues[token].pop(jti, None)
            for jti, err in body.get("setErrs", {}).items():
                errors[token][jti] = err
                queues[token].pop(jti, None)
            pending = list(queues[token].items())
        limit = int(body.get("maxEvents", 10))
        sets = dict(pending[:limit])
        return jsonify({"sets": sets, "moreAvailable": len(pending) > limit})

    @app.get("/errors")
    def get_errors():
        with lock:
            return jsonify(errors)

    app.run(host="127.0.0.1", port=config["port"])


if __name__ == "__main__":
    main(sys.argv[1])
