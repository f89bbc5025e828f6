#!/usr/bin/env python3
"""The Python example against a real server process (flexvqa_fake_server, or flexvqa_server when given):
answers stream, bad input gets INVALID_ARGUMENT, health and reflection answer, /metrics answers when the
server has an endpoint (its HTTP threads start in the process under test), SIGTERM exits 0. With --tls:
throwaway certificates and a token file made at test time, the server on TLS with tokens, the example
with --tls_ca and --token_file; without the token UNAUTHENTICATED, health still answers.

    python_client_test.py --server_bin BIN --stubs DIR --example client/python/flexvqa_example.py [--tls]
"""
import argparse
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib


def png(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xffffffff)
    rows = b"".join(
        b"\0" + b"".join(bytes([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), 128])
                         for x in range(width)) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def make_certificates(tmp):
    """A throwaway CA and a server certificate for localhost it signs; returns (ca, cert, key)."""
    def run(*command):
        subprocess.run(command, check=True, capture_output=True, cwd=tmp)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-days", "1", "-subj", "/CN=test-ca", "-keyout", "ca.key",
        "-out", "ca.pem")
    run("openssl", "req", *ec, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    with open(os.path.join(tmp, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-days", "1", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-extfile", "san.ext", "-out", "server.pem")
    return [os.path.join(tmp, name) for name in ("ca.pem", "server.pem", "server.key")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server_bin", required=True)
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--example", required=True)
    parser.add_argument("--server_args", default="")
    parser.add_argument("--tls", action="store_true", help="TLS and a bearer token")
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    import grpc  # noqa: E402  (python3-grpcio)

    failures = []

    def check(condition, what):
        print(("ok   " if condition else "FAIL ") + what)
        if not condition:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        security, client_flags = [], []
        if args.tls:
            ca, cert, key = make_certificates(tmp)
            token_file = os.path.join(tmp, "tokens.txt")
            with open(token_file, "w") as f:
                f.write("python-test-0123456789abcdef python\n")
            security = ["--tls_cert=" + cert, "--tls_key=" + key, "--auth_token_file=" + token_file]
            client_flags = ["--tls_ca", ca, "--token_file", token_file]
        server = subprocess.Popen([args.server_bin, "--listen_address=127.0.0.1:0",
                                   "--port_file=" + port_file] + security + args.server_args.split())
        try:
            deadline = time.monotonic() + 60
            port, metrics_port = None, 0
            while time.monotonic() < deadline and port is None:
                if os.path.exists(port_file):
                    port, metrics_port = [int(p) for p in open(port_file).read().split()]
                elif server.poll() is not None:
                    break
                else:
                    time.sleep(0.05)  # Polling the port file: the process gives no other signal.
            check(port is not None, "server started and published its port")
            if port is None:
                return 1
            address = ("localhost:%d" if args.tls else "127.0.0.1:%d") % port
            image = os.path.join(tmp, "image.png")
            with open(image, "wb") as f:
                f.write(png(32, 24))
            env = dict(os.environ, PYTHONPATH=args.stubs)
            run = lambda *extra, auth=True: subprocess.run(  # noqa: E731
                [sys.executable, args.example, "--server", address] + (client_flags if auth else [])
                + list(extra), capture_output=True, text=True, env=env, timeout=120)

            answer = run("--image", image, "--max_new_tokens", "16", "What is in the picture?")
            check(answer.returncode == 0, "example answers (stderr: %s)" % answer.stderr.strip())
            check("[finish=FINISH_REASON_" in answer.stdout, "example prints the final message")
            check(len(answer.stdout.splitlines()[0].strip()) > 0, "example streams text")
            again = run("--image", image, "--max_new_tokens", "16", "What is in the picture?")
            check(again.stdout.splitlines()[0] == answer.stdout.splitlines()[0],
                  "same request, same answer")

            bad = run("--max_new_tokens", "0", "What?")
            check(bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr,
                  "max_new_tokens 0 gets INVALID_ARGUMENT (%s)" % bad.stderr.strip())

            if args.tls:
                ca_only = ["--tls_ca", client_flags[1]]
                denied = run(*ca_only, "--max_new_tokens", "4", "What?", auth=False)
                check(denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr,
                      "TLS without a token gets UNAUTHENTICATED (%s)" % denied.stderr.strip())
                plain = run("--max_new_tokens", "4", "What?", auth=False)
                check(plain.returncode == 1 and "UNAVAILABLE" in plain.stderr,
                      "plaintext against TLS is refused (%s)" % plain.stderr.strip())

            if metrics_port:
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port,
                                            timeout=10) as response:
                    body = response.read().decode()
                check("flexvqa_requests_total" in body, "/metrics answers (HTTP threads started)")

            channel = (grpc.secure_channel(address, grpc.ssl_channel_credentials(
                open(client_flags[1], "rb").read())) if args.tls else grpc.insecure_channel(address))
            with channel:
                # Raw bytes: grpc.health.v1.HealthCheckRequest{} -> HealthCheckResponse{status: 1}.
                check_health = channel.unary_unary("/grpc.health.v1.Health/Check")
                check(check_health(b"", timeout=10) == b"\x08\x01", "health: SERVING")
                # grpc.reflection.v1alpha ServerReflectionRequest{list_services: ""} (field 7).
                reflect = channel.stream_stream(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
                replies = list(reflect(iter([b"\x3a\x00"]), timeout=10))
                check(any(b"flexvqa.v1.VqaService" in r for r in replies),
                      "reflection lists flexvqa.v1.VqaService")

            server.send_signal(signal.SIGTERM)
            check(server.wait(timeout=60) == 0, "SIGTERM: drained and exited 0")
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
