"""Third-party OAuth counterparts for the federation tests, written on Authlib and joserfc
(nobody here wrote them):

  server CONFIG.json   an RFC 7523 authorization server (Authlib's JWTBearerGrant on Flask) that
                       trusts one platform issuer with a configured JWKS (no discovery) and
                       answers bearer tokens at POST /token. CONFIG: issuer, jwks, token_endpoint,
                       port.
  client ENDPOINT KEY SCOPE
                       an independent RFC 7523 + DPoP client: builds a platform assertion signed
                       with the private JWK in file KEY and a DPoP proof with a fresh key, both
                       with joserfc, posts them with urllib, prints {"status", "body", "dpop_jkt"}.
"""

import json
import sys
import time
import secrets
import urllib.error
import urllib.parse
import urllib.request


def server(config_path):
    from flask import Flask
    from authlib.integrations.flask_oauth2 import AuthorizationServer
    from authlib.oauth2.rfc6749 import ClientMixin
    from authlib.oauth2.rfc7523 import JWTBearerGrant
    from joserfc.jwk import KeySet

    with open(config_path) as f:
        config = json.load(f)

    class Client(ClientMixin):
        def get_client_id(self):
            return "platform:" + config["issuer"]

        def get_default_redirect_uri(self):
            return None

        def get_allowed_scope(self, scope):
            return scope

        def check_redirect_uri(self, redirect_uri):
            return False

        def check_client_secret(self, client_secret):
            return False

        def check_endpoint_auth_method(self, method, endpoint):
            return True

        def check_response_type(self, response_type):
            return False

        def check_grant_type(self, grant_type):
            return grant_type == JWTBearerGrant.GRANT_TYPE

    platform_client = Client()

    class PlatformGrant(JWTBearerGrant):
        def resolve_issuer_client(self, issuer):
            return platform_client if issuer == config["issuer"] else None

        def resolve_client_public_key(self, client):
            return KeySet.import_key_set(config["jwks"])

        def authenticate_user(self, subject):
            return {"sub": subject}

        def has_granted_permission(self, client, user):
            return True

        def get_audiences(self):
            return [config["token_endpoint"]]

    app = Flask(__name__)
    authorization = AuthorizationServer(app, query_client=lambda client_id: None, save_token=lambda token, request: None)
    authorization.register_grant(PlatformGrant)

    @app.route("/token", methods=["POST"])
    def token():
        return authorization.create_token_response()

    app.run(host="127.0.0.1", port=int(config["port"]))


def client(endpoint, key_path, scope):
    from joserfc import jwt
    from joserfc.jwk import ECKey

    with open(key_path) as f:
        platform_key = ECKey.import_key(json.load(f))
    now = int(time.time())
    assertion = jwt.encode(
        {"alg": "ES256", "typ": "authorization-grant+jwt", "kid": platform_key.kid},
        {
            "iss": "https://kubernetes.default.svc",
            "sub": "system:serviceaccount:prod:payments",
            "aud": endpoint,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_urlsafe(16),
            "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "payments"}},
        },
        platform_key,
    )
    dpop_key = ECKey.generate_key("P-256")
    public = dpop_key.as_dict(private=False)
    proof = jwt.encode(
        {"alg": "ES256", "typ": "dpop+jwt", "jwk": public},
        {"jti": secrets.token_urlsafe(16), "htm": "POST", "htu": endpoint, "iat": now},
        dpop_key,
    )
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion, "scope": scope}
    request = urllib.request.Request(
        endpoint,
        data=urllib.parse.urlencode(form).encode(),
        headers={"DPoP": proof, "Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            status, body = response.status, json.load(response)
    except urllib.error.HTTPError as e:
        status, body = e.code, json.load(e)
    print(json.dumps({"status": status, "body": body, "dpop_jkt": dpop_key.thumbprint()}))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2])
    else:
        client(sys.argv[2], sys.argv[3], sys.argv[4])
