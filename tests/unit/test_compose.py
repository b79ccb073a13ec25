"""docker-compose.yml cannot run here (no Docker engine): check it parses, runs only commands that exist,
sets only settings elastask.yaml knows, and binds every published port to loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from elastask.config import known_env_names, load_settings
from elastask.entry.cli import add_plugin_commands, cli
from elastask_bed.simulator.server import build_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return dict(COMPOSE["services"])


def test_every_elastask_command_in_compose_exists() -> None:
    for name, service in services().items():
        command = service.get("command")
        if not command or command[0] not in ("elastask", "celery"):
            continue
        if command[0] == "celery":
            assert command[1:3] == ["-A", "elastask"], name
            assert command[3] in ("worker", "beat", "flower"), name
            continue
        add_plugin_commands()  # the test bed's commands (sim), as the elastask command has them
        group: click.Command = cli
        args = list(command[1:])
        while isinstance(group, click.Group) and args and args[0] in group.commands:
            group = group.commands[args.pop(0)]
        assert not isinstance(group, click.Group), f"{name}: {command} is not a command of elastask"
        if group.name == "sim":  # the simulator parses its own options
            build_parser().parse_args(args)
        else:
            group.make_context(group.name or "x", args)  # parses the options; raises if one is unknown


def test_compose_settings_are_elastask_settings() -> None:
    known = known_env_names()
    for name, service in services().items():
        for key in service.get("environment") or {}:
            if key.startswith("ELASTASK_"):
                assert key in known, f"{name}: {key} is not a setting of elastask.yaml"
    env = {k: str(v) for k, v in services()["worker"]["environment"].items() if k.startswith("ELASTASK_")}
    settings = load_settings(REPO / "elastask.yaml", env=env)  # and they validate
    assert settings.elasticsearch.host == "http://elasticsearch:9200"
    assert len(settings.kibana.hosts) == 3


def test_ports_are_bound_to_loopback_and_flower_needs_a_password() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    flower = " ".join(services()["flower"]["command"])
    assert "--basic-auth=" in flower and "FLOWER_PASSWORD" in flower


def test_the_sentinel_option_points_every_elastask_service_at_the_sentinels() -> None:
    override = yaml.safe_load((REPO / "docker-compose.sentinel.yml").read_text())["services"]
    assert {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(override)
    known = known_env_names()
    for name in ("worker", "beat", "flower", "index-init"):
        env = {**services()[name]["environment"], **override[name]["environment"]}  # compose merges maps
        assert all(key in known for key in env if key.startswith("ELASTASK_")), name
        settings = load_settings(REPO / "elastask.yaml", env={k: str(v) for k, v in env.items()})
        assert settings.redis_sentinels() == [(f"sentinel-{i}", 26379) for i in (1, 2, 3)]
        assert settings.redis_master_name == "elastask"
    for service in override.values():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", []))
