#!/usr/bin/env python3
"""Ask a flexvqa server a visual question from Python and print the answer as it streams.

Uses Debian's python3-grpcio and python3-protobuf with stubs generated from proto/flexvqa/v1/vqa.proto at
build time (target flexvqa_python_stubs, written to <build>/client/python/gen):

    PYTHONPATH=build/client/python/gen python3 client/python/flexvqa_example.py \
        --server localhost:50051 --image photo.jpg "What is in the picture?"

With TLS (--tls_ca; --tls_cert/--tls_key for mutual TLS) and a bearer token (--token, --token_file or
FLEXVQA_TOKEN), as docs/security.md describes.

Exit status: 0 on success, 1 with the gRPC status on stderr otherwise.
"""
import argparse
import os
import sys

import grpc

from flexvqa.v1 import vqa_pb2, vqa_pb2_grpc


def build_request(args):
    request = vqa_pb2.GenerateRequest(question=args.question, request_id=args.request_id or "")
    if args.image:
        with open(args.image, "rb") as f:
            data = f.read()
        mime = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}.get(
            args.image.rsplit(".", 1)[-1].lower(), "")
        request.images.add(data=data, mime_type=mime)
    sampling = request.sampling
    sampling.max_new_tokens = args.max_new_tokens
    if args.temperature is not None:
        sampling.temperature = args.temperature
    sampling.seed = args.seed
    return request


def read(path):
    with open(path, "rb") as f:
        return f.read()


def open_channel(args, options):
    """Plaintext without --tls_ca; TLS verifying the server against it; mutual TLS with a cert."""
    if not args.tls_ca:
        return grpc.insecure_channel(args.server, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca),
        private_key=read(args.tls_key) if args.tls_key else None,
        certificate_chain=read(args.tls_cert) if args.tls_cert else None)
    return grpc.secure_channel(args.server, credentials, options=options)


def token_of(args):
    if args.token:
        return args.token
    if args.token_file:
        words = read(args.token_file).decode().split()
        return words[0] if words else ""
    return os.environ.get("FLEXVQA_TOKEN", "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--image", help="JPEG or PNG file")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--request_id")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds")
    parser.add_argument("--tls_ca", help="PEM CA bundle that signed the server's certificate")
    parser.add_argument("--tls_cert", help="client certificate (mutual TLS)")
    parser.add_argument("--tls_key", help="client private key (mutual TLS)")
    parser.add_argument("--token", help="bearer token")
    parser.add_argument("--token_file", help="file whose first word is the bearer token")
    args = parser.parse_args()
    token = token_of(args)
    metadata = [("authorization", "Bearer " + token)] if token else None

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with open_channel(args, options) as channel:
        stub = vqa_pb2_grpc.VqaServiceStub(channel)
        try:
            final = None
            for response in stub.Generate(build_request(args), timeout=args.timeout,
                                          metadata=metadata):
                if response.HasField("delta"):
                    sys.stdout.write(response.delta.text)
                    sys.stdout.flush()
                elif response.HasField("final"):
                    final = response.final
            print()
            if final is not None:
                print("[finish=%s generated=%d prompt=%d first_token_ms=%.1f total_ms=%.1f]" % (
                    vqa_pb2.FinishReason.Name(final.finish_reason), final.usage.generated_tokens,
                    final.usage.prompt_tokens, final.timings.first_token_ms,
                    final.timings.total_ms))
        except grpc.RpcError as error:
            print("\nerror: %s: %s" % (error.code().name, error.details()), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
