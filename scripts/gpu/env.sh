# Environment for binaries built by scripts/gpu/build.sh (sourced, not run).
D=/opt/deps/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$D${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LIBRARY_PATH=$D
export PATH=/opt/deps/usr/bin:$PATH
