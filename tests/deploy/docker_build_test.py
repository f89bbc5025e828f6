#!/usr/bin/env python3
"""The Dockerfile's build stage without a Docker engine: what `docker build` would do with a checkout that
has a host build/ (the CMakeCache.txt of another directory), .git and node_modules.

  - .dockerignore, applied with Docker's rules (patterns relative to the context root, `**`, `!`
    exceptions, a directory's pattern covers what is under it), keeps build trees, .git, node_modules and
    caches out of the context and everything the build needs in;
  - the Dockerfile pins its base images by exact tag and torch by version, and each build stage runs its
    deploy/docker/ script;
  - in a copy of the checkout filtered through .dockerignore, deploy/docker/build_cpu.sh (the build-cpu
    stage's RUN) configures and builds from scratch and writes the tiny checkpoint; the server it built
    answers --help;
  - deploy/docker/collect_libs.sh (what the CUDA stage gathers its libraries with) copies exactly the
    libraries `ldd` resolves for that server, base libraries excepted, and the server then resolves every
    one of them from the copy; a library that is not found fails it.

    docker_build_test.py --source DIR --work DIR [--timeout S]
"""
import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

FAILURES = []
START = time.monotonic()


def check(condition, what):
    print("%s %6.1fs %s" % ("ok  " if condition else "FAIL", time.monotonic() - START, what), flush=True)
    if not condition:
        FAILURES.append(what)
    return condition


def ignore_rules(path):
    """[(regex, exclude)] from a .dockerignore, in order (the last match decides)."""
    rules = []
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((re.compile(regex + r"\Z"), exclude))
    return rules


def ignored(rel, rules):
    """Whether Docker leaves `rel` (relative, '/'-separated) out: a pattern matches it or a parent."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for regex, exclude in rules:
        if any(regex.match(p) for p in prefixes):
            result = exclude
    return result


def context_files(source, rules):
    files = []
    for root, dirs, names in os.walk(source):
        rel_root = os.path.relpath(root, source)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not ignored(rel_root + d, rules)]
        files += [rel_root + n for n in names if not ignored(rel_root + n, rules)]
    return files


BASE = re.compile(r"^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s)\.so")


def ldd(binary, env=None):
    """{soname: resolved path or None} for every library with a '=>'."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env, timeout=60).stdout
    libs = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (not found|(\S+))", line)
        if m:
            libs[m.group(1)] = m.group(3)
    return libs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="the checkout (the build context)")
    parser.add_argument("--work", required=True, help="scratch directory (emptied)")
    parser.add_argument("--timeout", type=float, default=1500)
    args = parser.parse_args()
    source = os.path.abspath(args.source)

    # --- .dockerignore ---
    rules = ignore_rules(os.path.join(source, ".dockerignore"))
    for path in ("build/CMakeCache.txt", "build-gpu/server/flexvqa_server", ".git/HEAD",
                 "tests/deploy/node_modules/yaml/package.json", "bench/__pycache__/x.pyc", ".devdeps/a.deb"):
        check(ignored(path, rules), ".dockerignore leaves out %s" % path)
    files = context_files(source, rules)
    needed = ["CMakeLists.txt", "scripts/install_deps.sh", "scripts/build.sh", "deploy/docker/build_cpu.sh",
              "deploy/docker/collect_libs.sh", "scripts/gpu/fetch_devdeps.sh", "server/metrics.cc",
              "proto/flexvqa/v1/vqa.proto", "tests/deploy/package.json"]
    check(all(n in files for n in needed), "the context keeps what the stages need (%s)" % ", ".join(needed))
    check(not any(re.match(r"build[^/]*/|\.git/|.*node_modules/", f) for f in files),
          "no build tree, .git or node_modules in the context (%d files)" % len(files))
    check(os.path.exists(os.path.join(source, "build", "CMakeCache.txt")) or
          not os.path.exists(os.path.join(source, "build")),
          "the checkout's build/ (when there is one) is a real build tree, which the copy must not get")

    # --- The Dockerfile: pinned, one script per build stage. ---
    dockerfile = open(os.path.join(source, "Dockerfile")).read()
    args_default = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, re.M))
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args_default.get(m.group(1), m.group(0)), f)
              for f in re.findall(r"^FROM (\S+)", dockerfile, re.M)]
    for image in images:
        check(re.search(r":(\d+\.\d+(\.\d+)?)(-\S+)?$", image) or "@sha256:" in image,
              "base image %s is pinned (exact version tag or digest)" % image)
    check(re.search(r"torch==\$\{TORCH_VERSION\}", dockerfile) and
          re.match(r"\d+\.\d+\.\d+$", args_default.get("TORCH_VERSION", "")),
          "torch is pinned (%s)" % args_default.get("TORCH_VERSION"))
    check("RUN deploy/docker/build_cpu.sh /opt/flexvqa" in dockerfile and
          "RUN deploy/docker/build_cuda.sh /opt/flexvqa" in dockerfile, "each build stage runs its deploy/docker script")

    # --- build_cpu.sh in a filtered copy. ---
    shutil.rmtree(args.work, ignore_errors=True)
    copy = os.path.join(args.work, "src")
    out = os.path.join(args.work, "opt")
    for f in files:
        os.makedirs(os.path.dirname(os.path.join(copy, f)), exist_ok=True)
        shutil.copy2(os.path.join(source, f), os.path.join(copy, f), follow_symlinks=False)
    env = dict(os.environ)
    # The copy's objects are the checkout's: ccache hashes paths relative to base_dir (the checkout).
    env.setdefault("CCACHE_BASEDIR", source)
    env.setdefault("JOBS", "2")
    left = args.timeout - (time.monotonic() - START)
    try:
        r = subprocess.run(["deploy/docker/build_cpu.sh", out], cwd=copy, env=env, capture_output=True, text=True,
                           timeout=max(60, left - 60))
        built = r.returncode == 0
        log = r.stdout[-3000:] + r.stderr[-3000:]
    except subprocess.TimeoutExpired:
        built, log = False, "timed out"
    check(built, "deploy/docker/build_cpu.sh built in the filtered copy" + ("" if built else ":\n" + log))
    server = os.path.join(copy, "build", "server", "flexvqa_server")
    if built:
        shipped = os.path.join(source, "models", "demo-flex")
        check(all(filecmp.cmp(os.path.join(shipped, f), os.path.join(out, "models", "demo-flex", f), shallow=False)
                  for f in ("config.json", "model.safetensors", "tokenizer.model", "clip/model.safetensors")),
              "the demo checkpoint (the image's default model) was copied")
        r = subprocess.run([server, "--help"], capture_output=True, text=True, timeout=60)
        check(r.returncode == 0 and "--drain_ms" in r.stdout, "the server it built answers --help")

        # --- collect_libs.sh on that server: the list is exactly ldd's, and complete. ---
        lib = os.path.join(args.work, "lib")
        r = subprocess.run([os.path.join(copy, "deploy/docker/collect_libs.sh"), lib, server],
                           capture_output=True, text=True, timeout=300)
        copied = set(r.stdout.split())
        wanted = {name for name, where in ldd(server).items() if where and not BASE.match(name)}
        check(r.returncode == 0 and copied == wanted and set(os.listdir(lib)) == wanted,
              "collect_libs.sh copied exactly the %d libraries ldd resolves, base libraries excepted "
              "(missing %s, extra %s)" % (len(wanted), sorted(wanted - copied)[:5], sorted(copied - wanted)[:5]))
        resolved = ldd(server, env={"LD_LIBRARY_PATH": lib, "PATH": os.environ["PATH"]})
        outside = {n: p for n, p in resolved.items() if not BASE.match(n) and not (p or "").startswith(lib + "/")}
        check(not outside, "with only the copy on LD_LIBRARY_PATH every library resolves there (not: %s)" %
              sorted(outside)[:5])
        r = subprocess.run([server, "--help"], capture_output=True, text=True, timeout=60,
                           env={"LD_LIBRARY_PATH": lib, "PATH": os.environ["PATH"]})
        check(r.returncode == 0, "the server runs on the copied libraries")
        shutil.rmtree(lib, ignore_errors=True)

    # --- A library that is not found fails collect_libs.sh (and --check), naming it. ---
    scratch = tempfile.mkdtemp(dir=args.work if os.path.isdir(args.work) else None)
    with open(os.path.join(scratch, "gone.c"), "w") as f:
        f.write("int gone(void) { return 1; }\n")
    with open(os.path.join(scratch, "main.c"), "w") as f:
        f.write("int gone(void);\nint main(void) { return gone() - 1; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", os.path.join(scratch, "libgone.so"), os.path.join(scratch, "gone.c")],
                   check=True, timeout=60)
    subprocess.run(["cc", "-o", os.path.join(scratch, "main"), os.path.join(scratch, "main.c"), "-L" + scratch, "-lgone"],
                   check=True, timeout=60)
    os.remove(os.path.join(scratch, "libgone.so"))
    for mode in ([], ["--check"]):
        r = subprocess.run([os.path.join(source, "deploy/docker/collect_libs.sh")] + mode +
                           [os.path.join(scratch, "dest"), os.path.join(scratch, "main")],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode != 0 and "libgone.so" in r.stderr,
              "collect_libs.sh %sfails on a library not found: %s" % (" ".join(mode) + " " if mode else "", r.stderr.strip()))
    shutil.rmtree(args.work, ignore_errors=True)
    print("%d failed" % len(FAILURES))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
