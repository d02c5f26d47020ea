"""The container image: built from Debian and PyPI packages and this repository, run with podman.

No registry for base images is needed. The base is made here from Debian packages with
debootstrap and imported into podman once per machine (it stays cached under a tag naming
its recipe); then the Dockerfile is built on it with `--build-arg BASE=…`, and the image is
run as docker-compose.yml runs it: its environment (with a BUS_SECRET_KEY as `.env` would
give), a named volume on /storage, port 2021 published on the loopback. The tests publish
and subscribe through the mapped port, stop the container with SIGTERM (exit 0), start it
again and a new container on the same volume, and find the events each time; they run the
image's health check against a live and a dead server, and check what the image declares.

Skips, saying why, only where podman cannot run at all (.ci/run installs podman, runc and
debootstrap as root). Every podman call has a timeout; containers, volumes and the busd
image are removed afterwards, the base image is kept for the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml  # in the test extra, through schemathesis
from busclient import SSE, free_port, publish, request

# the first test builds the base (about a minute, once per machine) and the image (about one)
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("BUSD_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBOOTSTRAP = ["debootstrap", "--variant=minbase",
               "--include=python3,python3-venv,ca-certificates", DEBIAN_SUITE]
# what a slim image leaves out too: package caches and lists, documentation, translations
TRIM = ["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/locale"]
RECIPE = hashlib.sha256(json.dumps([DEBOOTSTRAP, TRIM]).encode()).hexdigest()[:12]
BASE = f"localhost/busd-test-base:{DEBIAN_SUITE}-{RECIPE}"

HEALTHCHECK = ["CMD", "python3", "/opt/busd/healthcheck.py"]
RUNTIME_MAX_MB = 150  # the README's target for the runtime image on a slim base
BUSD_LAYERS_MAX_MB = 25  # what busd and its dependencies add to the base


# -- podman --------------------------------------------------------------------------------

class Podman:
    """`podman --runtime runc --cgroup-manager=cgroupfs …` with a containers.conf that sets
    no default ulimits (podman's defaults cannot be applied on this kind of machine)."""

    def __init__(self, conf_dir: Path) -> None:
        self.argv = ["podman", "--cgroup-manager=cgroupfs"]
        if shutil.which("runc"):
            self.argv[1:1] = ["--runtime", "runc"]
        conf = os.environ.get("CONTAINERS_CONF")
        if not conf:
            conf = str(conf_dir / "containers.conf")
            Path(conf).write_text("[containers]\ndefault_ulimits = []\n")
        self.env = {**os.environ, "CONTAINERS_CONF": conf}

    def run(self, *args: str, timeout: float = 60, check: bool = True,
            stdin=None) -> subprocess.CompletedProcess:
        cmd = [*self.argv, *args]
        try:
            done = subprocess.run(cmd, env=self.env, stdin=stdin if stdin is not None
                                  else subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n{_text(exc.stdout)}"
                        f"\n{_text(exc.stderr)}")
        if check and done.returncode != 0:
            pytest.fail(f"exit {done.returncode}: {' '.join(cmd)}\n{done.stdout[-3000:]}\n"
                        f"{done.stderr[-3000:]}")
        return done

    def inspect(self, *args: str) -> dict:
        return json.loads(self.run(*args).stdout)[0]


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> Podman:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (.ci/run installs Debian's podman, runc and "
                    "debootstrap when it runs as root)")
    pm = Podman(tmp_path_factory.mktemp("podman"))
    info = pm.run("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60, check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    return pm


# -- the base image (Debian packages only) and the busd image ------------------------------

def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _remove_tree(root: Path) -> None:
    """Remove a debootstrap target, first unmounting what a failed run may have left there."""
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], timeout=30, check=False)
    if _mounts_under(root):
        return  # never delete through a mount point
    shutil.rmtree(root, ignore_errors=True)


def _build_base(podman: Podman, workdir: Path) -> None:
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        pytest.skip(f"the base image {BASE} is not cached and cannot be made here: debootstrap "
                    "needs to be installed and run as root (.ci/run installs it)")
    target = workdir / "rootfs"
    log = workdir / "debootstrap.log"
    try:
        with open(log, "wb") as out:
            try:
                done = subprocess.run([*DEBOOTSTRAP, str(target), DEBIAN_MIRROR], stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      timeout=600)
            except subprocess.TimeoutExpired:
                pytest.fail(f"debootstrap took over 600s:\n{log.read_text()[-3000:]}")
        if done.returncode != 0:
            pytest.fail(f"debootstrap failed ({done.returncode}):\n{log.read_text()[-3000:]}")
        for sub in TRIM:
            for entry in (target / sub).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(target), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            podman.run("import", "--message", f"debootstrap {' '.join(DEBOOTSTRAP[1:])}",
                       "-", BASE, stdin=tar.stdout, timeout=300)
        finally:
            tar.stdout.close()
            tar.wait(timeout=60)
    finally:
        _remove_tree(target)


@pytest.fixture(scope="module")
def base(podman, tmp_path_factory) -> str:
    if podman.run("image", "exists", BASE, check=False).returncode != 0:
        _build_base(podman, tmp_path_factory.mktemp("base"))
    return BASE


@pytest.fixture(scope="module")
def image(podman, base) -> str:
    tag = f"localhost/busd-test:{uuid.uuid4().hex[:12]}"
    args = ["build", "--format", "docker", "--layers=false", "--pull=never",
            "--build-arg", f"BASE={base}", "-t", tag, "-f", str(REPO / "Dockerfile")]
    if Path("/etc/ssl/certs").is_dir():  # pip inside the build trusts this machine's CAs
        args += ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    started = time.monotonic()
    podman.run(*args, str(REPO), timeout=600)
    print(f"\nbuilt {tag} on {base} in {time.monotonic() - started:.0f}s")
    yield tag
    podman.run("rmi", "-f", tag, check=False, timeout=120)


# -- running it as docker-compose.yml says -------------------------------------------------

def compose_service() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["bus"]


def compose_environment(dotenv: dict[str, str]) -> dict[str, str]:
    """The service's environment, `${VAR}`, `${VAR:?msg}` and `${VAR:-default}` filled in
    from `dotenv` as Compose fills them in from `.env`."""
    def substitute(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if dotenv.get(name):
            return dotenv[name]
        if op == ":?":
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        return arg if op == ":-" else ""

    env = {}
    for item in compose_service()["environment"]:
        name, _, value = item.partition("=")
        env[name] = re.sub(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}", substitute, value)
    return env


class Container:
    """One `podman run -d` of the image, with the mapped loopback port."""

    def __init__(self, podman: Podman, image: str, volume: str, env: dict[str, str]) -> None:
        self.podman = podman
        self.image = image
        self.name = f"busd-test-{uuid.uuid4().hex[:12]}"
        self.port = free_port()
        args = ["run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:2021",
                "-v", f"{volume}:/storage"]
        for name, value in env.items():
            args += ["-e", f"{name}={value}"]
        podman.run(*args, image, timeout=120)

    def logs(self) -> str:
        done = self.podman.run("logs", self.name, check=False, timeout=30)
        return done.stdout + done.stderr

    def state(self) -> dict:
        return self.podman.inspect("container", "inspect", self.name)["State"]

    def wait_healthy(self, timeout: float = 60) -> dict:
        """/healthz through the mapped port, once the server answers it."""
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.state()["Running"]:
                pytest.fail(f"container exited: {self.state()}\n{self.logs()}")
            try:
                url = f"http://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    health = json.load(answer)
                if health["status"] == "ok":
                    return health
            except (OSError, ValueError) as exc:
                error = exc
            time.sleep(0.3)
        pytest.fail(f"no /healthz within {timeout}s ({error}):\n{self.logs()}")

    def exec(self, *argv: str) -> str:
        return self.podman.run("exec", self.name, *argv, timeout=60).stdout

    def sigterm(self, timeout: float = 30) -> tuple[int, float]:
        """Send SIGTERM, wait for the exit: (exit code, seconds it took)."""
        started = time.monotonic()
        self.podman.run("kill", "--signal", "SIGTERM", self.name, timeout=30)
        code = self.podman.run("wait", self.name, timeout=timeout).stdout.strip()
        return int(code), time.monotonic() - started

    def remove(self) -> None:
        self.podman.run("rm", "-f", "-v", "-t", "5", self.name, check=False, timeout=60)


@pytest.fixture
def run(podman, image):
    """Factory: `run(volume, env)` → a started Container; all removed afterwards."""
    started: list[Container] = []

    def start(volume: str, env: dict[str, str]) -> Container:
        started.append(Container(podman, image, volume, env))
        return started[-1]

    yield start
    for container in started:
        container.remove()


@pytest.fixture
def volume(podman):
    name = f"busd-test-{uuid.uuid4().hex[:12]}"
    podman.run("volume", "create", name, timeout=60)
    yield name
    podman.run("volume", "rm", "-f", name, check=False, timeout=60)


def oldest(port: int, subject: str, count: int) -> list[dict]:
    with SSE(port, f"subject={subject}&start=oldest") as stream:
        assert stream.status == 200, stream.status
        events = stream.events(count, timeout=10)
        assert stream.no_event(0.3), f"more than {count} events"
    return events


# -- the tests -----------------------------------------------------------------------------

def test_data_survives_restarts_and_sigterm_exits_0(podman, run, volume):
    env = compose_environment({"BUS_SECRET_KEY": "container-test-secret"})
    assert env["BUS_SECRET_KEY"] == "container-test-secret"
    namespaces = env["BUS_NAMESPACES"].split(",")
    ns = namespaces[0]

    first = run(volume, env)
    health = first.wait_healthy()
    assert sorted(health["namespaces"]) == sorted(namespaces)

    # publish and subscribe through the mapped port: a live subscriber, then a replay
    with SSE(first.port, f"subject={ns}.>&start=newest") as live:
        assert live.status == 200
        published = []
        for n in range(3):
            answer = publish(first.port, f"{ns}.created", {"marker": f"clear-text-{n}"},
                             key=f"k{n}")
            assert answer.status == 202, answer
            published.append(answer.headers["x-bus-event-id"])
        assert [e["id"] for e in live.events(3, timeout=10)] == published
    assert [e["id"] for e in oldest(first.port, f"{ns}.>", 3)] == published
    assert publish(first.port, f"{ns}.created", 0, key="k0").status == 409

    # busd runs as the image's unprivileged user and owns what it wrote to the volume;
    # the data on the volume is encrypted with the .env key
    owner = first.exec("python3", "-c", "import os; print(os.getuid(), os.getgid(), "
                       f"os.stat('/storage/{ns}').st_uid)").split()
    assert owner == ["10001", "10001", "10001"]
    stored = first.exec("python3", "-c", "import pathlib; d = pathlib.Path('/storage/" + ns +
                        "'); print(sorted(p.name for p in d.iterdir()), "
                        "any(b'clear-text-' in p.read_bytes() for p in d.iterdir()))")
    assert "'keycheck'" in stored and stored.split()[-1] == "False", stored

    # the image's health check, as the container runtime runs it
    assert podman.run("healthcheck", "run", first.name, timeout=60).returncode == 0
    assert first.state()["Health"]["Status"] == "healthy"

    # SIGTERM: busd drains and exits 0, promptly (not killed after a timeout)
    code, took = first.sigterm()
    assert code == 0, first.logs()
    assert took < 15, f"SIGTERM took {took:.1f}s"
    assert 'msg="stopped"' in first.logs()

    # the same container started again finds the events (and the dedup keys)
    podman.run("start", first.name, timeout=60)
    first.wait_healthy()
    assert [e["id"] for e in oldest(first.port, f"{ns}.>", 3)] == published
    assert publish(first.port, f"{ns}.created", 1, key="k1").status == 409
    answer = publish(first.port, f"{ns}.created", {"marker": "clear-text-3"}, key="k3")
    assert answer.status == 202
    published.append(answer.headers["x-bus-event-id"])

    # `podman stop` sends the image's STOPSIGNAL (SIGTERM) and gets exit 0 as well
    started = time.monotonic()
    podman.run("stop", "-t", "30", first.name, timeout=60)
    assert time.monotonic() - started < 15
    assert first.state()["ExitCode"] == 0, first.logs()
    first.remove()

    # a new container on the same volume: the events live in the volume, not the container
    second = run(volume, env)
    health = second.wait_healthy()
    assert health["namespaces"][ns]["events"] == 4
    assert [e["id"] for e in oldest(second.port, f"{ns}.>", 4)] == published
    assert request(second.port, "GET", "/metrics").status == 200
    # the offline reader of the README, in a container of its own beside the server
    debug = podman.run("run", "--rm", "-v", f"{volume}:/storage", "--entrypoint", "bus",
                       second.image, "debug", "--path", "/storage", "--secret-key",
                       env["BUS_SECRET_KEY"], timeout=60)
    assert [json.loads(line)["id"] for line in debug.stdout.splitlines()] == published
    code, _ = second.sigterm()
    assert code == 0, second.logs()


def test_health_check_fails_without_a_server(podman, image):
    done = podman.run("run", "--rm", "--entrypoint", "python3", image,
                      "/opt/busd/healthcheck.py", check=False, timeout=60)
    assert done.returncode == 1, done
    assert "unhealthy: http://127.0.0.1:2021/healthz" in done.stderr


def test_refuses_to_start_without_namespaces(podman, image):
    done = podman.run("run", "--rm", image, check=False, timeout=60)
    assert done.returncode != 0
    assert "BUS_NAMESPACES" in done.stderr, done.stderr


def test_image_declares_user_volume_port_signal_and_health_check(podman, base, image):
    info = podman.inspect("image", "inspect", image)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert list(config["Volumes"]) == ["/storage"]
    assert list(config["ExposedPorts"]) == ["2021/tcp"]
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["/opt/busd/bin/bus", "server"]  # exec form: busd is PID 1
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["BUS_ADDR"] == "0.0.0.0:2021" and env["BUS_PATH"] == "/storage"
    assert "BUS_NAMESPACES" not in env
    assert info["Healthcheck"]["Test"] == HEALTHCHECK
    assert info["Healthcheck"]["Interval"] == 30 * 10**9

    # the runtime stage has no compiler, no pip and no wheels left behind
    probe = podman.run(
        "run", "--rm", "--entrypoint", "python3", image, "-c",
        "import importlib.util, os, shutil; print(shutil.which('gcc'), shutil.which('cc'), "
        "importlib.util.find_spec('pip'), os.path.exists('/wheels'))", timeout=60)
    assert probe.stdout.split() == ["None", "None", "None", "False"]

    size = info["Size"]
    base_size = podman.inspect("image", "inspect", base)["Size"]
    print(f"\nimage {size / MIB:.1f} MiB ({size / 1e6:.0f} MB), base {base_size / MIB:.1f} MiB, "
          f"busd's layers {(size - base_size) / MIB:.1f} MiB")
    assert size - base_size <= BUSD_LAYERS_MAX_MB * MIB
    assert size <= RUNTIME_MAX_MB * MIB


def test_compose_file_matches_the_image():
    service = compose_service()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert service["build"] == "."
    assert service["restart"] == "unless-stopped"
    assert service["volumes"] == ["bus_data:/storage"]
    assert "VOLUME [\"/storage\"]" in dockerfile
    assert service["ports"] == ["2021:2021"]
    assert service["healthcheck"]["test"] == HEALTHCHECK
    assert f"CMD {json.dumps(HEALTHCHECK[1:])}" in dockerfile
    env = compose_environment({"BUS_SECRET_KEY": "k"})
    assert env["BUS_ADDR"] == "0.0.0.0:2021" and env["BUS_PATH"] == "/storage"
    assert env["BUS_NAMESPACES"]
    with pytest.raises(AssertionError, match="BUS_SECRET_KEY"):
        compose_environment({})  # no .env: compose refuses rather than store in clear


def test_health_check_script_follows_bus_addr(make_server):
    """tools/healthcheck.py against a server outside any container: BUS_ADDR's port, the
    loopback for an all-interfaces address, exit 1 where nothing answers."""
    server = make_server("app")
    script = [sys.executable, str(REPO / "tools" / "healthcheck.py")]

    def check(addr: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
        return subprocess.run(script, env={**env, "BUS_ADDR": addr}, capture_output=True,
                              text=True, timeout=30)

    for addr in (f"127.0.0.1:{server.port}", f":{server.port}", f"0.0.0.0:{server.port}"):
        assert check(addr).returncode == 0, addr
    dead = check(f":{free_port()}")
    assert dead.returncode == 1 and "unhealthy" in dead.stderr
