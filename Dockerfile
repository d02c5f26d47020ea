# busd in a container image.
#
#   docker build -t busd .
#   docker run -d --name busd -p 127.0.0.1:2021:2021 -e BUS_NAMESPACES=app,orders \
#       -v busd_data:/storage busd
#
# Two stages: `builder` compiles busd's wheel (its Cython extensions need a C compiler) and
# collects the wheels of its dependencies; the runtime stage installs only those wheels into
# a virtualenv, without compiler or build tools, and runs `bus server` as an unprivileged
# user with its data on the /storage volume.
#
# BASE is any Debian-based image with python3 >= 3.11, python3-venv and ca-certificates:
# by default the official slim Python image; busd's tests build one from Debian packages
# with debootstrap and pass it with --build-arg BASE=... Both stages use it, so the
# virtualenv built in the runtime stage finds the same interpreter.
ARG BASE=python:3.12-slim-bookworm

FROM ${BASE} AS builder
# pip trusts the image's CA store (where a TLS-intercepting proxy's CA would be installed)
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN set -eux; \
    packages="gcc libc6-dev zlib1g-dev"; \
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || packages="$packages python3-dev"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY busd ./busd
# busd's wheel (built in an isolated environment with Cython and setuptools) and one wheel
# for each dependency, all in /wheels; then the wheels with compiled code lose their debug
# symbols (uvloop's extension is 13 MB with them, under 2 MB without)
RUN set -eux; \
    /opt/build/bin/pip wheel --wheel-dir /wheels .; \
    /opt/build/bin/pip install 'wheel>=0.40'; \
    for whl in /wheels/*.whl; do \
        case "$whl" in *-none-any.whl) continue ;; esac; \
        /opt/build/bin/python -m wheel unpack --dest /tmp/unpacked "$whl"; \
        find /tmp/unpacked -name '*.so' -exec strip --strip-unneeded {} +; \
        rm "$whl"; \
        /opt/build/bin/python -m wheel pack --dest-dir /wheels /tmp/unpacked/*; \
        rm -rf /tmp/unpacked; \
    done; \
    ls -l /wheels

FROM ${BASE}
LABEL org.opencontainers.image.title="busd" \
      org.opencontainers.image.description="A persistent, high-performance message bus, wire-compatible with Bus (ella.to/bus)" \
      org.opencontainers.image.licenses="MIT"
# the unprivileged user busd runs as, owning the data volume
RUN set -eux; \
    groupadd --system --gid 10001 bus; \
    useradd --system --uid 10001 --gid bus --home-dir /storage --no-create-home \
        --shell /usr/sbin/nologin bus; \
    install -d -o bus -g bus -m 0750 /storage
# install the wheels into a virtualenv, then remove pip and setuptools from it: nothing is
# installed at run time. The wheels are mounted from the builder, so they take no room in
# a layer (RUN --mount needs BuildKit, Docker's default builder since 23.0, or podman).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    set -eux; \
    python3 -m venv /opt/busd; \
    /opt/busd/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /wheels busd; \
    /opt/busd/bin/pip uninstall -y --disable-pip-version-check pip setuptools; \
    /opt/busd/bin/bus --version
COPY tools/healthcheck.py /opt/busd/healthcheck.py

ENV PATH=/opt/busd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BUS_ADDR=0.0.0.0:2021 \
    BUS_PATH=/storage
# BUS_NAMESPACES is required and has no default: `docker run -e BUS_NAMESPACES=app,orders`.
# Every other BUS_* variable of `bus server --help` works too (BUS_SECRET_KEY, ...).
VOLUME ["/storage"]
EXPOSE 2021
USER 10001:10001
WORKDIR /storage
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["python3", "/opt/busd/healthcheck.py"]
# busd drains on SIGTERM (stops accepting, ends streams, fsyncs) and exits 0; the exec-form
# entrypoint makes it PID 1, so the signal reaches it. Arguments after the image name are
# more `bus server` flags.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/busd/bin/bus", "server"]
