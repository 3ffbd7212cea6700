"""Kafka security as code: the principals of the bus, their SCRAM credentials, their ACLs, the local CA.

**Principals.** One per station (``station-SH-PVG``, from the reference data), one per service
(``svc-streams``, ``svc-sink``, ``svc-gateway``, ``svc-monitor``), ``svc-simulator`` (the demo
simulator, which stands in for every station at once: never on a real cluster) and ``admin`` (the
super user that applies topics, users and ACLs). Stations get a principal each, not one per region,
so that one compromised or retired station is locked out alone; their rights are their region's.

**ACLs** (``grants()``), with Kafka's StandardAuthorizer denying everything not granted:

- a station writes (and describes) its region's ``border.<R>.*`` topics and their dead letters
  (``dlq.border.<R>.*``, ``dlq.import``), holds IdempotentWrite on the cluster, and reads nothing;
- ``svc-streams`` reads the source topics and ``control`` (and ``alerts.derived`` and ``dispositions``, for the
  escalation stage), writes the derived topics and the dead
  letters, and owns its consumer group, its internal topics (``streams.*``), its changelogs
  (``<app id>-*``) and its transactional ids;
- ``svc-sink`` reads everything it stores (source, derived, ``dlq.*``), writes dead letters, owns its
  group (and the ``-replay`` group of its crash recovery);
- ``svc-gateway`` reads ``alerts.*``, owns the ``yrdbus-gateway*`` groups of its webhooks and writes
  ``dlq.webhooks``;
- ``svc-monitor`` describes topics and groups and reads ``alerts.derived`` (the live view of a run).

``apply()`` makes a cluster match: it upserts every principal's SCRAM credential (the passwords come
from a ``PasswordStore``: files, never the command line) and creates the missing ACLs, and deletes
ACLs of those principals that the table no longer has. Running it twice changes nothing the second time.

**Certificates** (``make_certificates``): a local CA and a broker certificate for 127.0.0.1 and
localhost, made with the ``cryptography`` package under ``var/kafka/security/`` (git-ignored, mode 600),
for a local secured stack only; a real deployment uses the agencies' own PKI.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from schemas import topics
from schemas.reference import stations

ADMIN = "admin"
#: the KRaft controller listener's own principal (SASL/PLAIN: SCRAM credentials live in the metadata log,
#: which a controller must read before it can check them)
CONTROLLER = "controller"
MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
STREAMS_APP_ID = "yrdbus-streams"
SINK_GROUP = "yrdbus-sink"
GATEWAY_GROUP = "yrdbus-gateway"
MONITOR_GROUP = "yrdbus-monitor"
CLUSTER = "kafka-cluster"


# =========================================================================== principals
@dataclass(frozen=True)
class Principal:
    name: str
    role: str                 # station | service | admin
    region: str | None = None
    purpose: str = ""

    @property
    def user(self) -> str:
        return f"User:{self.name}"


def station_principal(station_id: str) -> str:
    return f"station-{station_id}"


def principals() -> list[Principal]:
    out = [Principal(ADMIN, "admin", None, "super user: applies topics, SCRAM users and ACLs")]
    out += [
        Principal("svc-streams", "service", None, "stream workers (Faust)"),
        Principal("svc-sink", "service", None, "ClickHouse sink"),
        Principal("svc-gateway", "service", None, "alert gateway (SSE, WebSocket, webhooks)"),
        Principal("svc-monitor", "service", None, "the live view of `yrdbus run`: offsets, lag, newest alerts"),
        Principal("svc-simulator", "service", None, "demo simulator, writes as every station (not for production)"),
    ]
    for sid, st in sorted(stations().items()):
        out.append(Principal(station_principal(sid), "station", st["region"], st.get("name", "")))
    return out


def principal(name: str) -> Principal:
    for p in principals():
        if p.name == name:
            return p
    raise KeyError(f"{name!r} is not a principal of the bus (see `yrdbus security principals`)")


# =========================================================================== ACLs
@dataclass(frozen=True)
class Grant:
    """One ALLOW ACL: ``principal`` may ``operation`` on ``resource`` ``name`` (``pattern``: literal | prefixed)."""

    principal: str
    resource: str             # topic | group | cluster | transactional_id
    name: str
    pattern: str              # literal | prefixed
    operation: str            # READ, WRITE, DESCRIBE, CREATE, ALL, IDEMPOTENT_WRITE, DESCRIBE_CONFIGS
    why: str = ""

    def binding(self):
        from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

        rtype = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.BROKER,
                 "transactional_id": ResourceType.TRANSACTIONAL_ID}[self.resource]
        return AclBinding(rtype, self.name, ResourcePatternType[self.pattern.upper()], f"User:{self.principal}",
                          "*", AclOperation[self.operation], AclPermissionType.ALLOW)

    def key(self) -> tuple:
        return (self.principal, self.resource, self.name, self.pattern, self.operation)

    def text(self) -> str:
        star = "*" if self.pattern == "prefixed" else ""
        return f"{self.principal:22} {self.operation:16} {self.resource} {self.name}{star}"


def grants(prefix: str = "", *, streams_app_id: str = STREAMS_APP_ID, sink_group: str = SINK_GROUP,
           gateway_group: str = GATEWAY_GROUP) -> list[Grant]:
    """Every ACL of the bus. ``prefix`` is the topic prefix of a private copy of the bus (tests)."""
    p = prefix
    dlq = topics.dead_letter(p)                      # "dlq.<prefix>"
    G: list[Grant] = []

    def add(principal, resource, name, pattern, ops, why=""):
        for op in ops:
            G.append(Grant(principal, resource, name, pattern, op, why))

    for pr in principals():
        if pr.role != "station":
            continue
        r = pr.region
        add(pr.name, "topic", f"{p}border.{r}.", "prefixed", ["WRITE", "DESCRIBE"], f"publish {r}'s events")
        add(pr.name, "topic", f"{dlq}border.{r}.", "prefixed", ["WRITE"], "dead-letter its own bad rows")
        add(pr.name, "topic", f"{dlq}import", "literal", ["WRITE"], "rows whose region cannot be read")
        add(pr.name, "cluster", CLUSTER, "literal", ["IDEMPOTENT_WRITE"], "idempotent producer")

    s = "svc-streams"
    add(s, "topic", f"{p}border.", "prefixed", ["READ"], "the four regions' source events")
    add(s, "topic", f"{p}{topics.CONTROL}", "literal", ["READ"], "heightened-security windows")
    add(s, "topic", f"{p}alerts.", "prefixed", ["WRITE", "DESCRIBE"], "derived and routed alerts")
    add(s, "topic", f"{p}{topics.DERIVED_ALERTS}", "literal", ["READ"], "its alerts, for the escalation stage")
    add(s, "topic", f"{p}{topics.DISPOSITIONS}", "literal", ["READ"], "officers' acknowledgements (escalation)")
    for t in (topics.TRENDS, topics.RISK_SCORES):
        add(s, "topic", f"{p}{t}", "literal", ["WRITE", "DESCRIBE"], "trend signals and risk scores")
    add(s, "topic", dlq, "prefixed", ["WRITE", "DESCRIBE"], "events it cannot process")
    add(s, "topic", f"{p}streams.", "prefixed", ["ALL"], "its internal (subject-keyed) topics")
    add(s, "topic", f"{streams_app_id}", "prefixed", ["ALL"], "its table changelogs")
    add(s, "group", f"{streams_app_id}", "prefixed", ["ALL"], "its consumer group")
    add(s, "transactional_id", f"{streams_app_id}", "prefixed", ["ALL"], "exactly-once producers, if turned on")
    add(s, "cluster", CLUSTER, "literal", ["IDEMPOTENT_WRITE"], "idempotent producer")

    k = "svc-sink"
    add(k, "topic", f"{p}border.", "prefixed", ["READ"], "source events")
    for t in (topics.DERIVED_ALERTS, topics.TRENDS, topics.RISK_SCORES):
        add(k, "topic", f"{p}{t}", "literal", ["READ"], "stream outputs")
    add(k, "topic", f"{p}{topics.DISPOSITIONS}", "literal", ["READ"], "officers' dispositions of alerts")
    add(k, "topic", dlq, "prefixed", ["READ", "WRITE"], "dead letters: stored, and written for undecodable records")
    add(k, "group", sink_group, "prefixed", ["READ"], "its consumer group and its -replay group")
    add(k, "cluster", CLUSTER, "literal", ["IDEMPOTENT_WRITE"], "idempotent producer")

    g = "svc-gateway"
    add(g, "topic", f"{p}alerts.", "prefixed", ["READ"], "derived and routed alerts")
    add(g, "topic", f"{dlq}webhooks", "literal", ["WRITE", "CREATE", "DESCRIBE"], "undeliverable webhook alerts")
    add(g, "topic", f"{p}{topics.DISPOSITIONS}", "literal", ["READ", "WRITE", "CREATE", "DESCRIBE"],
        "officers' dispositions: recorded, and read back to answer repeated requests")
    add(g, "topic", f"{p}{topics.CONTROL}", "literal", ["WRITE", "DESCRIBE"], "heightened mode from the console")
    add(g, "group", gateway_group, "prefixed", ["READ"], "one group per webhook")
    add(g, "cluster", CLUSTER, "literal", ["IDEMPOTENT_WRITE"], "idempotent producer")

    m = "svc-monitor"
    add(m, "topic", "*", "literal", ["DESCRIBE"], "offsets of every topic")
    add(m, "group", "*", "literal", ["DESCRIBE"], "committed offsets of every group (lag)")
    add(m, "topic", f"{p}{topics.DERIVED_ALERTS}", "literal", ["READ"], "newest alerts")
    add(m, "group", MONITOR_GROUP, "prefixed", ["READ"], "its own groups")

    x = "svc-simulator"
    add(x, "topic", f"{p}border.", "prefixed", ["WRITE", "DESCRIBE"], "stands in for every station")
    add(x, "topic", f"{p}{topics.CONTROL}", "literal", ["WRITE", "DESCRIBE"], "scripted heightened windows")
    add(x, "topic", f"{dlq}border.", "prefixed", ["WRITE"], "dead letters")
    add(x, "cluster", CLUSTER, "literal", ["IDEMPOTENT_WRITE"], "idempotent producer")
    return G


# =========================================================================== passwords
class PasswordStore:
    """One file per principal under ``folder`` (mode 600), made with 192 random bits on first use."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def file(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad principal name {name!r}")
        return self.folder / name

    def get(self, name: str) -> str:
        path = self.file(name)
        if not path.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            os.chmod(self.folder, 0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24) + "\n")
        return path.read_text().splitlines()[0].strip()


def salted_scram(password: str, *, mechanism: str = MECHANISM, iterations: int = SCRAM_ITERATIONS,
                 salt: bytes | None = None) -> tuple[bytes, bytes]:
    """(salt, SaltedPassword) of RFC 5802: Hi(password, salt, i) = PBKDF2-HMAC over the mechanism's hash."""
    salt = salt if salt is not None else secrets.token_bytes(32)
    algo = {"SCRAM-SHA-512": "sha512", "SCRAM-SHA-256": "sha256"}[mechanism]
    return salt, hashlib.pbkdf2_hmac(algo, password.encode(), salt, iterations)


def format_scram_argument(name: str, password: str, *, mechanism: str = MECHANISM,
                          iterations: int = SCRAM_ITERATIONS) -> str:
    """``--add-scram`` of ``kafka-storage format`` in its salted form, so that no password is on a command line."""
    salt, salted = salted_scram(password, mechanism=mechanism, iterations=iterations)
    return (f'{mechanism}=[name={name},iterations={iterations},salt="{base64.b64encode(salt).decode()}",'
            f'saltedpassword="{base64.b64encode(salted).decode()}"]')


# =========================================================================== certificates
@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path        # PEM: what clients trust
    ca_key: Path         # PEM: the CA's key (mode 600), kept to sign a new broker certificate
    broker: Path         # PEM: the broker's key (PKCS#8) followed by its certificate chain (mode 600)


def tls_files(folder: Path) -> TlsFiles:
    folder = Path(folder)
    return TlsFiles(folder / "ca.pem", folder / "ca.key", folder / "broker.pem")


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def make_certificates(folder: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                      days: int = 365, force: bool = False) -> TlsFiles:
    """A local CA and a broker certificate (RSA 2048, SHA-256) for ``hosts``; kept when already there."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = tls_files(folder)
    if not force and files.ca_cert.is_file() and files.ca_key.is_file() and files.broker.is_file():
        return files
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "yrdbus local"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "yrdbus local CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days * 5))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "yrdbus local"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "yrdbus broker")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    _write_private(files.ca_key, ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    # Kafka's PEM key store: the PKCS#8 key, then the certificate chain, in one file.
    _write_private(files.broker, key.private_bytes(pem, pkcs8, serialization.NoEncryption())
                   + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    return files


# =========================================================================== apply
class SecurityError(RuntimeError):
    """The cluster refused a user or ACL change; the message says which and why."""


def _result(futures, what: str, timeout: float) -> list[str]:
    errors = []
    for key, fut in futures.items():
        try:
            fut.result(timeout=timeout)
        except Exception as exc:
            errors.append(f"{what} {key}: {exc}")
    return errors


def apply(admin_config: dict, passwords: PasswordStore, prefix: str | Iterable[str] = "", *,
          timeout: float = 30.0, names: list[str] | None = None, **grant_options) -> dict:
    """Make the cluster's SCRAM users and ACLs match ``principals()`` and ``grants(prefix)``.

    ``admin_config`` is a librdkafka configuration of a super user. ``prefix`` may be several (a staging
    copy of the bus beside the real one): the ACLs are those of every prefix. ``names`` limits the
    principals (default: all but ``admin``, whose credential is bootstrapped when the storage is formatted).
    Returns ``{"users": [...], "created": n, "deleted": n, "kept": n}``.
    """
    from confluent_kafka.admin import (AclBindingFilter, AclOperation, AclPermissionType, AdminClient,
                                       ResourcePatternType, ResourceType, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)

    admin = AdminClient(admin_config)
    managed = [p for p in principals() if p.name != ADMIN and (names is None or p.name in names)]
    mech = ScramMechanism.SCRAM_SHA_512
    upserts = [UserScramCredentialUpsertion(p.name, ScramCredentialInfo(mech, SCRAM_ITERATIONS),
                                            passwords.get(p.name).encode()) for p in managed]
    errors = _result(admin.alter_user_scram_credentials(upserts, request_timeout=timeout), "SCRAM user", timeout) \
        if upserts else []
    if errors:
        raise SecurityError("; ".join(errors))

    prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    wanted = {g.key(): g for pf in prefixes for g in grants(pf, **grant_options)
              if any(g.principal == p.name for p in managed)}
    have: dict[tuple, object] = {}
    for p in managed:
        flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{p.name}", None,
                               AclOperation.ANY, AclPermissionType.ANY)
        for b in admin.describe_acls(flt, request_timeout=timeout).result(timeout=timeout):
            rtype = {ResourceType.TOPIC: "topic", ResourceType.GROUP: "group", ResourceType.BROKER: "cluster",
                     ResourceType.TRANSACTIONAL_ID: "transactional_id"}.get(b.restype, str(b.restype))
            key = (b.principal.split(":", 1)[1], rtype, b.name, b.resource_pattern_type.name.lower(),
                   b.operation.name)
            if b.permission_type == AclPermissionType.ALLOW and b.host == "*":
                have[key] = b
            else:
                have[("other",) + key] = b
    create = [g.binding() for k, g in wanted.items() if k not in have]
    stale = [b for k, b in have.items() if k not in wanted]
    if create:
        errors = _result(admin.create_acls(create, request_timeout=timeout), "create ACL", timeout)
        if errors:
            raise SecurityError("; ".join(errors))
    if stale:
        filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                                    b.permission_type) for b in stale]
        errors = _result(admin.delete_acls(filters, request_timeout=timeout), "delete ACL", timeout)
        if errors:
            raise SecurityError("; ".join(errors))
    return {"users": [p.name for p in managed], "created": len(create), "deleted": len(stale),
            "kept": len(wanted) - len(create)}


# =========================================================================== a client's settings
def client_env(principal_name: str, *, security_dir: Path, protocol: str, bootstrap: str) -> dict[str, str]:
    """The ``YRDBUS_KAFKA_*`` variables of a process running as ``principal_name`` on a local secured stack.

    The password stays in its file: the variables name the file, never the password.
    """
    env = {"YRDBUS_KAFKA_BOOTSTRAP": bootstrap, "YRDBUS_KAFKA_SECURITY_PROTOCOL": protocol,
           "YRDBUS_KAFKA_SASL_MECHANISM": MECHANISM, "YRDBUS_KAFKA_USERNAME": principal_name,
           "YRDBUS_KAFKA_PASSWORD_FILE": str((Path(security_dir) / "passwords" / principal_name).resolve())}
    if protocol == "SASL_SSL":
        env["YRDBUS_KAFKA_SSL_CA_LOCATION"] = str(tls_files(security_dir).ca_cert.resolve())
    return env
