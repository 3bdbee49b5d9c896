"""Validate the deployment files users copy: Compose files against the Compose
specification's JSON schema, Kubernetes manifests with kubernetes-validate (strict, a
current Kubernetes) plus the security rules the examples promise, and the ECS task
definitions against ecs/task-definition.schema.json.

    python scripts/check_manifests.py COMPOSE_SCHEMA_JSON

Exits non-zero naming every file and rule that failed.
"""

import json
import pathlib
import subprocess
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S_VERSION = "1.37.0"
failures: list[str] = []


def fail(where: str, why: str) -> None:
    failures.append(f"{where}: {why}")


def check_compose(schema_path: pathlib.Path) -> None:
    # The spec's schema declares draft 2019-09.
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    files = sorted((ROOT / "compose").glob("*.yaml"))
    if not files:
        fail("compose/", "no Compose files")
    for f in files:
        doc = yaml.safe_load(f.read_text())
        for e in validator.iter_errors(doc):
            fail(str(f.relative_to(ROOT)), f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
    a = yaml.safe_load((ROOT / "compose/migrations-service.yaml").read_text())["services"]
    if a["app"].get("depends_on", {}).get("migrate", {}).get("condition") != "service_completed_successfully":
        fail("compose/migrations-service.yaml", "app must wait for migrate: service_completed_successfully")
    if a["migrate"].get("depends_on", {}).get("db", {}).get("condition") != "service_healthy" or "healthcheck" not in a["db"]:
        fail("compose/migrations-service.yaml", "migrate must be gated by the database healthcheck")
    b = yaml.safe_load((ROOT / "compose/entrypoint.yaml").read_text())["services"]
    test = b["web"].get("healthcheck", {}).get("test", [])
    if "wait" not in test or "--once" not in test:
        fail("compose/entrypoint.yaml", "web's healthcheck must be `schemagate wait --once`")


def pod_specs(doc: dict):
    kind = doc.get("kind")
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        yield doc["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield doc["spec"]


def check_fleet_job(where: str, spec: dict) -> None:
    """A Job running `schemagate fleet --shards N` must be Indexed with N completions: each
    pod's JOB_COMPLETION_INDEX is its shard, and the shards cover the targets only together."""
    for c in spec["template"]["spec"]["containers"]:
        args = c.get("command", []) + c.get("args", [])
        if "fleet" not in args or not any("schemagate" in a for a in args):
            continue
        if "--shards" not in args:
            continue
        shards = int(args[args.index("--shards") + 1])
        if spec.get("completionMode") != "Indexed":
            fail(where, "a fleet with --shards must run in an Indexed Job (completionMode: Indexed)")
        if spec.get("completions") != shards:
            fail(where, f"completions {spec.get('completions')} must equal --shards {shards}")


def check_k8s() -> None:
    k8s = ROOT / "k8s"
    files = sorted(p for p in k8s.rglob("*.yaml") if p.name != "kustomization.yaml")
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", K8S_VERSION, *map(str, files)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        fail("k8s/", f"kubernetes-validate {K8S_VERSION} --strict failed:\n{result.stdout}{result.stderr}")
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    for r in kustomization.get("resources", []):
        if not (k8s / r).is_file():
            fail("k8s/kustomization.yaml", f"resource {r} does not exist")
    waits = 0
    for f in files:
        where = str(f.relative_to(ROOT))
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc:
                continue
            if "kubectl" in json.dumps(doc):
                fail(where, "uses kubectl: schemagate needs no Kubernetes API access")
            if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
                fail(where, f"{doc['kind']}: no RBAC is needed")
            if doc["kind"] == "Job":
                spec = doc["spec"]
                # An Indexed Job (a sharded fleet) bounds retries per index instead.
                retries = ("backoffLimitPerIndex", "maxFailedIndexes") if spec.get("completionMode") == "Indexed" else ("backoffLimit",)
                for field in (*retries, "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
                    if field not in spec:
                        fail(where, f"Job without {field}")
                check_fleet_job(where, spec)
                if spec["template"]["spec"].get("restartPolicy") != "Never":
                    fail(where, "Job pods must have restartPolicy: Never")
            for pod in pod_specs(doc):
                if pod.get("automountServiceAccountToken") is not False:
                    fail(where, "automountServiceAccountToken must be false")
                psc = pod.get("securityContext", {})
                if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                    fail(where, "pod must run as non-root with seccomp RuntimeDefault")
                for c in pod.get("initContainers", []) + pod["containers"]:
                    sc = c.get("securityContext", {})
                    name = f"{where} container {c['name']}"
                    if sc.get("allowPrivilegeEscalation") is not False:
                        fail(name, "allowPrivilegeEscalation must be false")
                    if sc.get("readOnlyRootFilesystem") is not True:
                        fail(name, "readOnlyRootFilesystem must be true")
                    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                        fail(name, "capabilities must drop ALL")
                    res = c.get("resources", {})
                    if not res.get("requests") or not res.get("limits"):
                        fail(name, "resource requests and limits must be set")
                    for e in c.get("env", []):
                        if "URL" in e["name"] and "value" in e:
                            fail(name, f"{e['name']} must come from a Secret, not a literal")
                    args = c.get("command", []) + c.get("args", [])
                    if any("schemagate" in a for a in args) and "wait" in args:
                        waits += 1
    if waits == 0:
        fail("k8s/", "no initContainer runs `schemagate wait`")


def check_ecs() -> None:
    schema = json.loads((ROOT / "ecs/task-definition.schema.json").read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    files = sorted((ROOT / "ecs").glob("*task-definition.json"))
    for f in files:
        doc = json.loads(f.read_text())
        for e in validator.iter_errors(doc):
            fail(str(f.relative_to(ROOT)), f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
    td = json.loads((ROOT / "ecs/task-definition.json").read_text())
    by_name = {c["name"]: c for c in td["containerDefinitions"]}
    gates = [
        d["containerName"]
        for c in td["containerDefinitions"]
        for d in c.get("dependsOn", [])
        if d["condition"] == "SUCCESS"
    ]
    if not gates or any(by_name.get(g, {}).get("essential", True) for g in gates):
        fail("ecs/task-definition.json", "the app must depend (SUCCESS) on a non-essential schemagate container")


def check_phases() -> None:
    # The expand/contract recipes (docs/src/phases.md) keep what makes them safe.
    dep = yaml.safe_load((ROOT / "k8s/phases/deployment.yaml").read_text())["spec"]["template"]["spec"]
    init = {c["name"]: c for c in dep["initContainers"]}
    if init.get("heartbeat", {}).get("restartPolicy") != "Always" or "heartbeat" not in init["heartbeat"]["args"]:
        fail("k8s/phases/deployment.yaml", "the heartbeat must be a native sidecar (restartPolicy: Always)")
    if list(init)[0] != "heartbeat":
        fail("k8s/phases/deployment.yaml", "the heartbeat sidecar must start before the wait")
    gate = init.get("schema-gate", {}).get("args", [])
    if "wait" not in gate or gate[gate.index("--phase") + 1] != "expand":
        fail("k8s/phases/deployment.yaml", "new pods must `wait --phase expand`")
    for f, phase in (("expand-job.yaml", "expand"), ("contract-job.yaml", "contract")):
        job = yaml.safe_load((ROOT / "k8s/phases" / f).read_text())
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        if args[args.index("--phase") + 1] != phase:
            fail(f"k8s/phases/{f}", f"must run `migrate --phase {phase}`")
    contract = json.loads((ROOT / "ecs/phases-contract-task-definition.json").read_text())
    if "--wait-for-drain" not in contract["containerDefinitions"][0]["command"]:
        fail("ecs/phases-contract-task-definition.json", "the contract task must --wait-for-drain")
    td = json.loads((ROOT / "ecs/phases-task-definition.json").read_text())
    by_name = {c["name"]: c for c in td["containerDefinitions"]}
    if not by_name.get("heartbeat", {}).get("essential"):
        fail("ecs/phases-task-definition.json", "the heartbeat must be essential: when it gives up, the task stops")
    c = yaml.safe_load((ROOT / "compose/phases.yaml").read_text())["services"]
    if "--release" not in c["web"]["entrypoint"] and "SCHEMAGATE_RELEASE" not in c["web"].get("environment", {}):
        fail("compose/phases.yaml", "web must register its release")


def main() -> int:
    check_compose(pathlib.Path(sys.argv[1]))
    check_k8s()
    check_ecs()
    check_phases()
    for f in failures:
        print(f"FAIL {f}")
    if failures:
        return 1
    print("manifests: compose, k8s and ecs files valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
