"""A real gRPC peer for tests/gateway/grpc.rs (grpcio, generic handlers, no generated code).

    grpc_peer.py server      -> prints the port, serves /demo.Echo/Say until stdin closes
    grpc_peer.py call ADDR [AUTHORIZATION]
                             -> prints JSON: code, details, reply, trailing metadata

The server answers Say with JSON naming the X-Portcullis-User it received and the bytes
it got, and sends a trailing metadata entry, so the test sees trailers pass back.
"""
import json
import sys
from concurrent import futures

import grpc


def serve():
    def say(request, context):
        md = dict(context.invocation_metadata())
        context.set_trailing_metadata((("x-demo-trailer", "kept"),))
        return json.dumps({"user": md.get("x-portcullis-user"), "roles": md.get("x-portcullis-roles"),
                           "authorization": md.get("authorization"), "got": request.decode()}).encode()

    handler = grpc.method_handlers_generic_handler(
        "demo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


def call(addr, authorization=None):
    with grpc.insecure_channel(addr) as channel:
        say = channel.unary_unary("/demo.Echo/Say")
        metadata = (("authorization", authorization),) if authorization else None
        out = {}
        try:
            reply, c = say.with_call(b"hello", metadata=metadata, timeout=30)
            out = {"code": c.code().value[0], "reply": json.loads(reply.decode()),
                   "trailing": dict(c.trailing_metadata() or ())}
        except grpc.RpcError as e:
            out = {"code": e.code().value[0], "details": e.details(),
                   "trailing": dict(e.trailing_metadata() or ())}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        call(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
