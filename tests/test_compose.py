"""docker-compose.yml: valid against the Compose specification, healthchecks, no secret literals.

There is no Docker engine here, so nothing is started. `tests/data/compose-spec.json` is the
Compose specification's JSON schema (compose-spec, Apache-2.0) as shipped in the docker-compose
1.29.2 wheel on PyPI (`compose/config/compose_spec.json`); it predates newer keys such as the
top-level `name:`, so the compose file keeps to what it defines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$", re.I)
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_valid_against_compose_spec(compose):
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text(encoding="utf-8"))
    jsonschema.Draft201909Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_catches_mistakes(compose):
    """The check is not vacuous: a misspelt key or a bad healthcheck fails."""
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    bad = json.loads(json.dumps(compose))
    bad["services"]["grafana"]["healthchek"] = bad["services"]["grafana"].pop("healthcheck")
    assert list(validator.iter_errors(bad))
    bad = json.loads(json.dumps(compose))
    bad["services"]["citywatch"]["healthcheck"]["interval"] = 30
    assert list(validator.iter_errors(bad))


def test_services_and_healthchecks(compose):
    services = compose["services"]
    assert set(services) == {"mosquitto", "influxdb", "grafana", "citywatch", "simulator"}
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"
    for name in ("citywatch", "simulator"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (REPO / services[name]["build"]["dockerfile"]).exists()
    assert services["citywatch"]["depends_on"]["influxdb"]["condition"] == "service_healthy"
    env = services["influxdb"]["environment"]
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup" and env["DOCKER_INFLUXDB_INIT_BUCKET"] == "citywatch"


def test_mounted_files_exist(compose):
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"{name}: {src} is missing"


def _strings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}/{i}")
    elif isinstance(node, str):
        yield path, node


def test_no_secret_literals(compose):
    example = {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                refs = INTERPOLATION.findall(str(value))
                literal = INTERPOLATION.sub("", str(value))
                assert refs, f"{name}: {key} must come from .env"
                assert literal in ("", "grafana:"), f"{name}: {key} has a literal part {literal!r}"
                assert set(refs) <= example, f"{name}: {key} uses a variable missing from .env.example"
    # no token-like literal anywhere (a long run of letters mixed with digits)
    for path, text in _strings(compose):
        for piece in re.split(r"[/:.\s\"']+", INTERPOLATION.sub("", text)):
            assert not (len(piece) >= 20 and re.search(r"\d", piece) and re.search(r"[A-Za-z]", piece)), (path, piece)
    # every variable the compose file needs is documented in .env.example, and no value is real
    for var in {v for _, text in _strings(compose) for v in INTERPOLATION.findall(text)}:
        assert var in example, f"{var} is not in .env.example"
    for line in (REPO / ".env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#") and SECRET_KEY.search(line.split("=", 1)[0]):
            assert line.split("=", 1)[1] == "CHANGE_ME", line


def test_mosquitto_acl():
    acl = (REPO / "deploy" / "mosquitto" / "acl").read_text()
    assert "pattern write city/+/%u/telemetry" in acl
    engine = acl.split("user citywatch", 1)[1].split("\nuser ", 1)[0]
    assert "topic read city/#" in engine and "topic write city/alerts/#" in engine
    assert "topic write city/deadletter/#" in engine
    conf = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf and "password_file" in conf
