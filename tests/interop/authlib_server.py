"""A real OAuth 2.0 authorization server for Portcullis's interoperability test.

Built with Authlib (PyPI) on Flask: the client_credentials grant (RFC 6749) issuing
RFC 9068 JWT access tokens signed RS256, RFC 7662 introspection, and the JWKS.
Listens on 127.0.0.1, on the port given as the first argument (0 = any); prints
"LISTENING <port>" once ready. Everything lives in memory and dies with the process.
"""

import sys
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, jsonify
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

ISSUER = "https://authlib.interop.test"
AUDIENCE = "portcullis"
KEY = RSAKey.generate_key(2048, private=True)
KEY_DICT = KEY.as_dict(private=True)
PUBLIC_JWKS = {"keys": [KEY.as_dict(private=False)]}


class Client(ClientMixin):
    def __init__(self, client_id, secret):
        self.client_id = client_id
        self.secret = secret

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return client_secret == self.secret

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"


CLIENTS = {
    "snow": Client("snow", "snow-secret"),
    "portcullis": Client("portcullis", "portcullis-secret"),
}
TOKENS = {}


class Token:
    def __init__(self, data, client_id):
        self.data = data
        self.client_id = client_id
        self.issued_at = int(time.time())
        self.revoked = False

    def is_expired(self):
        return time.time() >= self.issued_at + self.data["expires_in"]

    def is_revoked(self):
        return self.revoked


class Generator(JWTBearerTokenGenerator):
    def get_jwks(self):
        return {"keys": [KEY_DICT]}

    def get_audiences(self, client, user, scope):
        return [AUDIENCE]

    def get_extra_claims(self, client, grant_type, user, scope):
        return {"roles": ["integration"]}


class Introspection(IntrospectionEndpoint):
    def query_token(self, token, token_type_hint):
        return TOKENS.get(token)

    def introspect_token(self, token):
        return {
            "active": True,
            "client_id": token.client_id,
            "sub": token.client_id,
            "iss": ISSUER,
            "aud": [AUDIENCE],
            "exp": token.issued_at + token.data["expires_in"],
            "iat": token.issued_at,
            "roles": ["integration"],
        }

    def check_permission(self, token, client, request):
        return client.get_client_id() == "portcullis"


def save_token(token, request):
    TOKENS[token["access_token"]] = Token(token, request.client.get_client_id())


app = Flask(__name__)
server = AuthorizationServer(app, query_client=CLIENTS.get, save_token=save_token)
server.register_grant(grants.ClientCredentialsGrant)
server.register_token_generator("client_credentials", Generator(issuer=ISSUER))
server.register_endpoint(Introspection)


@app.route("/token", methods=["POST"])
def token():
    return server.create_token_response()


@app.route("/introspect", methods=["POST"])
def introspect():
    return server.create_endpoint_response(Introspection.ENDPOINT_NAME)


@app.route("/revoke-all", methods=["POST"])
def revoke_all():
    for t in TOKENS.values():
        t.revoked = True
    return jsonify(revoked=len(TOKENS))


@app.route("/jwks.json")
def jwks():
    return jsonify(PUBLIC_JWKS)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    httpd = make_server("127.0.0.1", port, app, threaded=True)
    print(f"LISTENING {httpd.server_port}", flush=True)
    httpd.serve_forever()
