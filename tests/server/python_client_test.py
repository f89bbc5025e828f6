#!/usr/bin/env python3
"""The Python example against a real server process (flexvqa_fake_server, or flexvqa_server when given):
answers stream, bad input gets INVALID_ARGUMENT, health and reflection answer, SIGTERM exits 0.

    python_client_test.py --server_bin BIN --stubs DIR --example client/python/flexvqa_example.py
"""
import argparse
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server_bin", required=True)
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--example", required=True)
    parser.add_argument("--server_args", default="")
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
        server = subprocess.Popen([args.server_bin, "--listen_address=127.0.0.1:0",
                                   "--port_file=" + port_file] + args.server_args.split())
        try:
            deadline = time.monotonic() + 60
            port = None
            while time.monotonic() < deadline and port is None:
                if os.path.exists(port_file):
                    port = int(open(port_file).read().split()[0])
                elif server.poll() is not None:
                    break
                else:
                    time.sleep(0.05)  # Polling the port file: the process gives no other signal.
            check(port is not None, "server started and published its port")
            if port is None:
                return 1
            address = "127.0.0.1:%d" % port
            image = os.path.join(tmp, "image.png")
            with open(image, "wb") as f:
                f.write(png(32, 24))
            env = dict(os.environ, PYTHONPATH=args.stubs)
            run = lambda *extra: subprocess.run(  # noqa: E731
                [sys.executable, args.example, "--server", address] + list(extra),
                capture_output=True, text=True, env=env, timeout=120)

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

            with grpc.insecure_channel(address) as channel:
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
