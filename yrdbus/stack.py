"""The local stack: a real Apache Kafka broker (KRaft) started by the project.

The jars are the official ones from Maven Central, pinned in ``yrdbus/kafka/pom.xml`` (shipped with the
package) and copied by Maven into a per-user cache folder (``kafka_lib_dir``).
Each node is one JVM running Kafka's own main class, ``kafka.Kafka``, with a
``server.properties`` this module writes under ``<var>/kafka/node-<id>/``.
Every node is both broker and controller, so one node is a whole cluster and
three nodes are a quorum.

``up(secure=True)`` starts a secured cluster instead (docs/security.md): SCRAM-SHA-512 over TLS
(``SASL_SSL``; ``tls=False``: ``SASL_PLAINTEXT``) on the client listener, Kafka's StandardAuthorizer with
``admin`` as the only super user besides the controllers, a local CA and broker certificate, the
``admin`` SCRAM credential bootstrapped when the storage is formatted, and every principal's SCRAM
credential and ACLs applied through the admin API (``yrdbus.security``). Passwords and keys live under
``<var>/kafka/security/`` with mode 600. The mode is recorded with the cluster; the plain default is
unchanged.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from schemas.settings import Settings

#: shipped with the package (a wheel too): the pinned broker and its logging
KAFKA_FILES = Path(__file__).resolve().parent / "kafka"
POM = KAFKA_FILES / "pom.xml"
LOG4J = KAFKA_FILES / "log4j2.properties"


class StackError(RuntimeError):
    """A stack operation failed; the message says what to do."""


# --------------------------------------------------------------------------- jars
def kafka_lib_dir(settings: Settings | None = None) -> Path:
    """Where the pinned jars are: ``YRDBUS_KAFKA_LIB_DIR``, else a per-user cache folder named by the pom's hash
    (``$XDG_CACHE_HOME/yrdbus`` or ``~/.cache/yrdbus``), which every checkout and install of that pin shares."""
    if settings is not None and settings.kafka_lib_dir is not None:
        return Path(settings.kafka_lib_dir).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return cache / "yrdbus" / f"kafka-{digest}" / "lib"


def ensure_kafka_jars(quiet: bool = False, settings: Settings | None = None) -> Path:
    """The folder of the pinned Kafka jars, resolved with Maven (from its local repository, else Maven Central)
    unless they are there already; one process at a time (a lock beside the folder)."""
    lib = kafka_lib_dir(settings)
    done = lib / ".complete"
    if done.is_file():
        return lib
    for tool, why in (("java", "run the Kafka broker (Java 17 or newer)"),
                      ("mvn", "fetch the pinned Kafka jars from Maven Central")):
        if shutil.which(tool) is None:
            raise StackError(f"'{tool}' is not on PATH: it is needed to {why}. "
                             f"Install it (Debian: apt-get install {'openjdk-17-jre-headless' if tool == 'java' else 'maven'}).")
    lib.parent.mkdir(parents=True, exist_ok=True)
    with open(lib.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():                  # another process resolved them while this one waited
            return lib
        if lib.exists():
            shutil.rmtree(lib)
        # Maven reads the pom from a copy: the package's folder may not be writable, and Maven writes beside it
        pom = lib.parent / "pom.xml"
        shutil.copyfile(POM, pom)
        cmd = ["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={lib}", "-DincludeScope=runtime"]
        if not quiet:
            print(f"Fetching the Kafka jars with Maven (once) into {lib} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"Maven could not resolve {POM}:\n" + (proc.stdout + proc.stderr)[-3000:])
        done.write_text(f"{POM}\n")
    return lib


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Node:
    node_id: int
    port: int
    controller_port: int
    home: Path
    log_file: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    def pid(self) -> int | None:
        """The pid of this node's running JVM, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_kafka_process(pid) else None


def _is_kafka_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


class KafkaStack:
    """The embedded Kafka cluster described by the settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.var_dir.resolve() / "kafka"
        self.log_dir = settings.log_dir.resolve()
        self.layout_file = self.home / "cluster.json"
        self.security_dir = self.home / "security"

    # ------------------------------------------------------------------ nodes
    def nodes(self, count: int | None = None) -> list[Node]:
        count = count or self._layout().get("brokers") or self.settings.kafka_brokers
        s = self.settings
        return [Node(node_id=i + 1, port=s.kafka_port + i, controller_port=s.kafka_controller_port + i,
                     home=self.home / f"node-{i + 1}", log_file=self.log_dir / f"kafka-{i + 1}.log")
                for i in range(count)]

    def _layout(self) -> dict:
        try:
            return json.loads(self.layout_file.read_text())
        except (OSError, ValueError):
            return {}

    def bootstrap(self, nodes: list[Node] | None = None) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in (nodes or self.nodes()))

    # ------------------------------------------------------------------ security
    @property
    def security_protocol(self) -> str:
        """PLAINTEXT, or the protocol of the client listener of a secured cluster."""
        return self._layout().get("security") or "PLAINTEXT"

    def passwords(self):
        from yrdbus.security import PasswordStore

        return PasswordStore(self.security_dir / "passwords")

    def client_env(self, principal: str) -> dict[str, str]:
        """The YRDBUS_KAFKA_* variables of a process connecting as ``principal`` (the password stays in its file)."""
        from yrdbus.security import client_env

        self.passwords().get(principal)
        return client_env(principal, security_dir=self.security_dir, protocol=self.security_protocol,
                          bootstrap=self.bootstrap())

    def client_settings(self, principal: str, **overrides) -> Settings:
        """Settings of a client of this cluster acting as ``principal`` (tests, the stack's own checks)."""
        env = self.client_env(principal)
        return self.settings.model_copy(update={
            "kafka_bootstrap": env["YRDBUS_KAFKA_BOOTSTRAP"], "kafka_security_protocol": self.security_protocol,
            "kafka_username": principal, "kafka_password_file": Path(env["YRDBUS_KAFKA_PASSWORD_FILE"]),
            "kafka_password": None,
            "kafka_ssl_ca_location": Path(env["YRDBUS_KAFKA_SSL_CA_LOCATION"])
            if "YRDBUS_KAFKA_SSL_CA_LOCATION" in env else None, **overrides})

    def admin_config(self) -> dict:
        """librdkafka options of the admin principal on this cluster (empty additions when it is plain)."""
        from schemas.kafka_config import kafka_security

        if self.security_protocol == "PLAINTEXT":
            return {}
        return kafka_security(self.client_settings("admin"))

    def _secure_properties(self, node: Node) -> dict:
        from yrdbus.security import ADMIN, CONTROLLER, MECHANISM, tls_files

        protocol = self.security_protocol
        pw = self.passwords()
        admin_pw, controller_pw = pw.get(ADMIN), pw.get(CONTROLLER)
        props = {
            "listeners": f"CLIENT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"CLIENT://127.0.0.1:{node.port}",
            "inter.broker.listener.name": "CLIENT",
            "listener.security.protocol.map": f"CLIENT:{protocol},CONTROLLER:{protocol}",
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "listener.name.client.sasl.enabled.mechanisms": MECHANISM,
            f"listener.name.client.{MECHANISM.lower()}.sasl.jaas.config":
                f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{ADMIN}" password="{admin_pw}";',
            # SCRAM credentials are records of the metadata log: a controller cannot check them before it has
            # read that log, so the controller listener uses PLAIN with its own static credential.
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{CONTROLLER}" '
                f'password="{controller_pw}" user_{CONTROLLER}="{controller_pw}";',
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN};User:{CONTROLLER}",
            "allow.everyone.if.no.acl.found": "false",
            # A secured cluster creates topics only through `yrdbus topics apply` as admin.
            "auto.create.topics.enable": "false",
        }
        if protocol == "SASL_SSL":
            tls = tls_files(self.security_dir)
            props.update({
                "ssl.keystore.type": "PEM", "ssl.keystore.location": tls.broker,
                "ssl.truststore.type": "PEM", "ssl.truststore.location": tls.ca_cert,
                "ssl.client.auth": "none", "ssl.endpoint.identification.algorithm": "https",
                "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            })
        return props

    def _prepare_security(self) -> None:
        from yrdbus.security import ADMIN, CONTROLLER, make_certificates

        self.security_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.security_dir, 0o700)
        pw = self.passwords()
        pw.get(ADMIN)
        pw.get(CONTROLLER)
        if self.security_protocol == "SASL_SSL":
            make_certificates(self.security_dir)

    def _apply_security(self, echo) -> None:
        from yrdbus.security import apply

        conf = {"bootstrap.servers": self.bootstrap(), **self.admin_config()}
        # The authorizer answers once the broker has caught up with the metadata log; until then, retry.
        deadline = time.monotonic() + self.settings.kafka_start_timeout_s
        while True:
            try:
                result = apply(conf, self.passwords())
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        echo(f"Security: {self.security_protocol} with SCRAM-SHA-512; {len(result['users'])} principals, "
             f"ACLs {result['created']} created, {result['deleted']} removed, {result['kept']} kept. "
             f"Passwords in {self.security_dir / 'passwords'} (mode 600); "
             f"`yrdbus security env <principal>` prints a client's settings.")

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        if not self.settings.embedded_kafka:
            from schemas.kafka_config import kafka_security

            return {"kafka": {"running": _answers(self.settings.bootstrap, config=kafka_security(self.settings)),
                              "external": True,
                              "bootstrap": self.settings.bootstrap, "pid": None}}
        nodes = self.nodes()
        pids = [n.pid() for n in nodes]
        return {"kafka": {
            "running": all(pids),
            "external": False,
            "bootstrap": self.bootstrap(nodes),
            "pid": pids[0],
            "brokers": [{"node_id": n.node_id, "port": n.port, "pid": p, "running": p is not None}
                        for n, p in zip(nodes, pids)],
            "data_dir": str(self.home),
            "security": self.security_protocol,
        }}

    # ------------------------------------------------------------------ up
    def up(self, brokers: int | None = None, echo=print, *, secure: bool | None = None, tls: bool = True) -> dict:
        """Start the embedded cluster; a no-op (said so) when it is already running.

        ``secure=True`` makes a new cluster a secured one (SASL_SSL; SASL_PLAINTEXT with ``tls=False``);
        ``None`` keeps whatever the cluster was made as. A secured cluster cannot be restarted plain, nor
        the reverse, without ``stack reset``.
        """
        if not self.settings.embedded_kafka:
            echo(f"YRDBUS_KAFKA_BOOTSTRAP names an external cluster ({self.settings.bootstrap}); nothing started.")
            return self.status()
        brokers = brokers or self.settings.kafka_brokers
        layout = self._layout()
        if layout and layout.get("brokers") != brokers:
            raise StackError(
                f"{self.home} holds a {layout.get('brokers')}-broker cluster; asked for {brokers}. "
                f"Run `yrdbus stack down` and `yrdbus stack reset --yes` to start over with another size.")
        wanted = None if secure is None else ("SASL_SSL" if tls else "SASL_PLAINTEXT") if secure else "PLAINTEXT"
        if layout and wanted is not None and wanted != (layout.get("security") or "PLAINTEXT"):
            raise StackError(
                f"{self.home} holds a {layout.get('security') or 'PLAINTEXT'} cluster; asked for {wanted}. "
                f"Run `yrdbus stack down` and `yrdbus stack reset --yes` to start over.")
        nodes = self.nodes(brokers)
        running = [n for n in nodes if n.pid()]
        started: dict[int, subprocess.Popen] = {}
        if len(running) == len(nodes):
            echo(f"Kafka is already running at {self.bootstrap(nodes)} (pid {', '.join(str(n.pid()) for n in nodes)}).")
            return self.status()
        lib = ensure_kafka_jars(quiet=False, settings=self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not layout:
            layout = {"cluster_id": _new_cluster_id(), "brokers": brokers}
            if wanted not in (None, "PLAINTEXT"):
                layout["security"] = wanted
            self.layout_file.write_text(json.dumps(layout, indent=2) + "\n")
        if self.security_protocol != "PLAINTEXT":
            self._prepare_security()
        for node in nodes:
            if node.pid():
                continue
            for port in (node.port, node.controller_port):
                if _port_in_use(port):
                    raise StackError(f"port {port} on 127.0.0.1 is taken by another process; "
                                     f"set YRDBUS_KAFKA_PORT / YRDBUS_KAFKA_CONTROLLER_PORT to free ports.")
            node.home.mkdir(parents=True, exist_ok=True)
            _write_private_text(node.properties, self._server_properties(node, nodes))
            if not (node.data_dir / "meta.properties").is_file():
                self._format(node, layout["cluster_id"], lib)
            started[node.node_id] = self._start(node, lib)
        self._wait_until_ready(nodes, started)
        echo(f"Kafka is up: bootstrap {self.bootstrap(nodes)} (pid {', '.join(str(n.pid()) for n in nodes)}).")
        if self.security_protocol != "PLAINTEXT":
            self._apply_security(echo)
        return self.status()

    def _server_properties(self, node: Node, nodes: list[Node]) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
        rf = min(3, len(nodes))
        props = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": node.data_dir,
            "num.partitions": 4,
            "default.replication.factor": rf,
            "min.insync.replicas": max(1, rf - 1),
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": max(1, rf - 1),
            # A consumer group on a local stack should not wait 3 s for members that never come.
            "group.initial.rebalance.delay.ms": 0,
            # Topics are created by `yrdbus topics apply`; auto-creation stays on for clients' convenience.
            "auto.create.topics.enable": "true",
            "log.retention.hours": 168,
            "log.segment.bytes": 256 * 1024 * 1024,
        }
        if self.security_protocol != "PLAINTEXT":
            props.update(self._secure_properties(node))
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self, lib: Path, *args: str, heap: str | None = None) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise StackError("'java' is not on PATH: it is needed to run the Kafka broker (Java 17 or newer).")
        cmd = [java]
        if heap:
            cmd += [f"-Xmx{heap}", "-Xms256m", "-XX:+UseG1GC", *shlex.split(self.settings.kafka_jvm_options)]
        cmd += ["-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={LOG4J}",
                "-cp", f"{lib}/*", *args]
        return cmd

    def _format(self, node: Node, cluster_id: str, lib: Path) -> None:
        # `--cluster-id=` in one word: a random id may begin with '-', which argparse would take for an option.
        cmd = self._java(lib, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                         "-c", str(node.properties), "--ignore-formatted")
        if self.security_protocol != "PLAINTEXT":
            from yrdbus.security import ADMIN, format_scram_argument

            # The admin's credential, salted here: the storage tool never sees the password itself.
            cmd += ["--add-scram", format_scram_argument(ADMIN, self.passwords().get(ADMIN))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"formatting the storage of node {node.node_id} failed:\n{proc.stdout}{proc.stderr}")

    def _start(self, node: Node, lib: Path) -> subprocess.Popen:
        cmd = self._java(lib, "kafka.Kafka", str(node.properties), heap=self.settings.kafka_heap)
        with open(node.log_file, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=node.home, start_new_session=True)
        node.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def _wait_until_ready(self, nodes: list[Node], started: dict[int, subprocess.Popen]) -> None:
        deadline = time.monotonic() + self.settings.kafka_start_timeout_s
        bootstrap = self.bootstrap(nodes)
        while time.monotonic() < deadline:
            for n in nodes:
                # The JVM launcher may re-exec itself at start, so ask the child we started, not /proc.
                proc = started.get(n.node_id)
                if (proc.poll() is not None) if proc else n.pid() is None:
                    raise StackError(f"Kafka node {n.node_id} exited during start-up. {_cause(n.log_file)}"
                                     f"Last lines of {n.log_file}:\n" + _tail(n.log_file))
            if _answers(bootstrap, expect_brokers=len(nodes), config=self.admin_config()):
                return
            time.sleep(0.5)
        raise StackError(f"Kafka did not answer a metadata request at {bootstrap} within "
                         f"{self.settings.kafka_start_timeout_s:.0f} s. Last lines of {nodes[0].log_file}:\n"
                         + _tail(nodes[0].log_file))

    # ------------------------------------------------------------------ down
    def down(self, echo=print, timeout_s: float = 60.0) -> bool:
        """Stop the embedded cluster cleanly (SIGTERM: a controlled shutdown). Nothing running is fine."""
        if not self.settings.embedded_kafka:
            echo("YRDBUS_KAFKA_BOOTSTRAP names an external cluster; nothing to stop.")
            return False
        nodes = [n for n in self.nodes() if n.pid()]
        if not nodes:
            echo("Kafka is not running; nothing to stop.")
            return False
        for n in nodes:
            pid = n.pid()
            if pid:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for n in nodes:
            while n.pid() and time.monotonic() < deadline:
                time.sleep(0.2)
            pid = n.pid()
            if pid:
                echo(f"node {n.node_id} did not stop within {timeout_s:.0f} s; killing it.")
                os.kill(pid, signal.SIGKILL)
            n.pid_file.unlink(missing_ok=True)
        echo("Kafka stopped.")
        return True

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (for fault tests)."""
        node = self.nodes()[node_id - 1]
        pid = node.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            while node.pid():
                time.sleep(0.05)

    def reset(self) -> None:
        if any(n.pid() for n in self.nodes()):
            raise StackError("Kafka is running; `yrdbus stack down` first.")
        shutil.rmtree(self.home, ignore_errors=True)


# --------------------------------------------------------------------------- helpers
def _new_cluster_id() -> str:
    """A KRaft cluster id (URL-safe base64 of a UUID), never starting with '-': the storage tool would read it as an option."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _write_private_text(path: Path, text: str) -> None:
    """Write a file only its owner can read (a secured broker's properties hold its own credentials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.chmod(path, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _answers(bootstrap: str, expect_brokers: int = 1, timeout_s: float = 2.0, config: dict | None = None) -> bool:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka import KafkaException

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000),
                         "log_level": 0, "logger": _SilentLogger(), **(config or {})})
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return len(md.brokers) >= expect_brokers


class _SilentLogger:
    """librdkafka logs every refused connection while the broker starts; that is expected here."""

    def log(self, *args, **kwargs):  # noqa: D401 - logging.Logger protocol
        pass

    def __getattr__(self, name):
        return lambda *a, **k: None


def _cause(path: Path) -> str:
    """The first ERROR or FATAL line of a node's log and the line after it (the exception): a node that exits
    logs its whole shutdown after the cause, so the last lines alone do not say why."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for i, line in enumerate(lines):
        if " ERROR " in line or " FATAL " in line:
            return "Cause: " + "\n".join(lines[i:i + 2]) + "\n"
    return ""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
