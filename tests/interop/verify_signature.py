"""Verifies an RFC 9421 signature (and RFC 9530 Content-Digest) with the
http-message-signatures package from PyPI, independently of Portcullis's own code.

Reads one JSON object on stdin: method, url, headers ([[name, value], ...]), body_b64,
key_id, alg ("hmac-sha256" or "ed25519"), key (the HMAC secret as text, or the Ed25519
public key PEM). Prints "OK" and exits 0, or prints the failure and exits 1.
"""

import base64
import json
import sys

from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver, algorithms


class Headers:
    def __init__(self, fields):
        self.fields = [(k, v) for k, v in fields]

    def items(self):
        return list(self.fields)

    def __iter__(self):
        return iter(dict.fromkeys(k for k, _ in self.fields))

    def __contains__(self, name):
        return any(k.lower() == name.lower() for k, _ in self.fields)

    def __getitem__(self, name):
        values = [v for k, v in self.fields if k.lower() == name.lower()]
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default


class Message:
    def __init__(self, method, url, headers):
        self.method = method
        self.url = url
        self.headers = headers


def main():
    req = json.load(sys.stdin)
    body = base64.b64decode(req["body_b64"])
    if req["alg"] == "hmac-sha256":
        alg, key = algorithms.HMAC_SHA256, req["key"].encode()
    else:
        alg, key = algorithms.ED25519, req["key"].encode()
    verifier = HTTPMessageVerifier(
        signature_algorithm=alg,
        key_resolver=MappingKeyResolver(public_keys={req["key_id"]: key}, private_keys={}),
    )
    message = Message(req["method"], req["url"], Headers(req["headers"]))
    try:
        results = verifier.verify(message, body=body)
    except Exception as e:  # the package raises its own exception types
        print(f"FAIL: {type(e).__name__}: {e}")
        return 1
    covered = [str(c) for r in results for c in r.covered_components]
    print("OK", " ".join(covered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
