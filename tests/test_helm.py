"""The Helm chart (deploy/helm/online) renders with Helm itself, as a library (helm-python-sdk: libhelm over
ctypes, no binary, no cluster), and every manifest it renders validates against the schemas of a current
Kubernetes release (kubernetes-validate); then what the chart promises is read off the rendered objects."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import helm_python as helm  # helm-python-sdk (the test extra)
import kubernetes_validate
import pytest
import yaml

from online.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "online"
KUBERNETES = "1.37"  # the newest release kubernetes-validate 1.37 ships schemas for
RELEASE, NAMESPACE = "prod", "ml"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # not in Kubernetes' own schemas

GPU_AND_MONITORING = {
    "trainer": {"gpu": {"enabled": True}, "replicas": 2},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
}
# Distinctive secret values: none of them (nor their base64) may end up outside the Secret.
SECRETS = {
    "adminToken": "admin-3f9c1e",
    "reviewerToken": "reviewer-77ab02",
    "feedbackApiKeys": {"crm": "feedback-key-51d0"},
    "awsAccessKeyId": "AKIAEXAMPLE0000",
    "awsSecretAccessKey": "aws-secret-9e8d7c",
}


def render(values: dict | None = None) -> list[dict]:
    """Every object the chart renders with these values (as `helm template` would), NOTES.txt left out."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def one(objects: list[dict], kind: str, component: str | None = None) -> dict:
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (component is None or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, (kind, component, [o["metadata"]["name"] for o in found])
    return found[0]


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module")
def default() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def gpu() -> list[dict]:
    return render(GPU_AND_MONITORING)


@pytest.mark.parametrize(
    "values",
    [
        None,
        GPU_AND_MONITORING,
        {"api": {"autoscaling": {"enabled": False}, "pdb": {"enabled": False}}, "ingress": {"enabled": True}},
        {"secrets": SECRETS, "redis": {"password": "pw", "database": 2}},
        {"secrets": {"existingSecret": "online-secrets"}, "serviceAccount": {"create": False}},
    ],
    ids=["defaults", "gpu-trainer+servicemonitor", "no-hpa+ingress", "secrets", "existing-secret"],
)
def test_every_rendered_manifest_validates_against_kubernetes(values):
    objects = render(values)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue  # a CRD's kind: asserted on its own below
        # strict: unknown fields (a misspelt key) fail too
        assert kubernetes_validate.validate(obj, KUBERNETES, strict=True) == KUBERNETES, obj["metadata"]["name"]


def test_the_chart_lints_clean():
    for values in (None, GPU_AND_MONITORING):
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
        assert not problems and not report["errors"], report


def test_default_values_render_the_three_parts_and_no_crd(default):
    kinds = sorted((o["kind"], o["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")) for o in default)
    assert kinds == sorted(
        [
            ("ConfigMap", ""),
            ("Secret", ""),
            ("ServiceAccount", ""),
            ("Deployment", "api"),
            ("Service", "api"),
            ("HorizontalPodAutoscaler", "api"),
            ("PodDisruptionBudget", "api"),
            ("Deployment", "consumer"),
            ("Service", "consumer"),
            ("Deployment", "trainer"),
            ("Service", "trainer"),
        ]
    )
    args = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: container(o)["args"]
        for o in default
        if o["kind"] == "Deployment"
    }
    assert args == {"api": ["serve"], "consumer": ["consume"], "trainer": ["train"]}


def test_the_api_is_ready_on_readyz_alive_on_healthz_and_scaled_by_the_hpa(default):
    api = one(default, "Deployment", "api")
    c = container(api)
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert port == 8000
    hpa = one(default, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "replicas" not in api["spec"], "with the HPA on, the HPA owns the replica count"
    assert c["resources"]["requests"]["cpu"], "CPU utilization needs a CPU request"
    service = one(default, "Service", "api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    fixed = one(render({"api": {"autoscaling": {"enabled": False}, "replicas": 3}}), "Deployment", "api")
    assert fixed["spec"]["replicas"] == 3


def test_the_configmap_points_at_sentinel_s3_and_replicated_kafka_and_holds_no_secret():
    objects = render({"secrets": SECRETS, "redis": {"password": "redis-pw-4c2a"}})
    data = one(objects, "ConfigMap")["data"]
    assert data["ONLINE_REDIS_SENTINELS"] == "redis-sentinel.redis.svc:26379"
    assert data["ONLINE_REDIS_SENTINEL_MASTER"] == "online"
    assert data["ONLINE_MODEL_STORE"] == "s3://online-models/models"
    assert data["ONLINE_KAFKA_REPLICATION_FACTOR"] == "3" and data["ONLINE_KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    assert data["ONLINE_STATE_DIR"] == "/state"
    # every ONLINE_ key is a real setting (a typo would be ignored by the application)
    settings = {f"ONLINE_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in data if k.startswith("ONLINE_")} <= settings
    # no secret, in clear or base64, outside the Secret
    secret_values = [
        "admin-3f9c1e",
        "reviewer-77ab02",
        "feedback-key-51d0",
        "AKIAEXAMPLE0000",
        "aws-secret-9e8d7c",
        "redis-pw-4c2a",
    ]
    everything_else = yaml.safe_dump([o for o in objects if o["kind"] != "Secret"])
    for value in secret_values:
        assert value not in everything_else and base64.b64encode(value.encode()).decode() not in everything_else
    for key in (
        "ONLINE_ADMIN_TOKEN",
        "ONLINE_REVIEWER_TOKEN",
        "ONLINE_FEEDBACK_API_KEYS",
        "ONLINE_REDIS_URL",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert key not in data
    secret = one(objects, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded["ONLINE_ADMIN_TOKEN"] == "admin-3f9c1e"
    assert decoded["ONLINE_FEEDBACK_API_KEYS"] == '{"crm":"feedback-key-51d0"}'
    assert decoded["AWS_SECRET_ACCESS_KEY"] == "aws-secret-9e8d7c"
    # every pod reads both
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        refs = container(deployment)["envFrom"]
        assert {"configMapRef": {"name": one(objects, "ConfigMap")["metadata"]["name"]}} in refs
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in refs


def test_a_secret_put_in_config_is_refused():
    with pytest.raises(helm.HelmError, match="ONLINE_ADMIN_TOKEN is a secret"):
        render({"config": {"ONLINE_ADMIN_TOKEN": "oops"}})
    with pytest.raises(helm.HelmError):  # values.schema.json: only ONLINE_* settings
        render({"config": {"PATH": "/usr/bin"}})
    with pytest.raises(helm.HelmError, match="set it through kafka.bootstrap"):  # one place for each setting
        render({"config": {"ONLINE_KAFKA_BOOTSTRAP": "elsewhere:9092"}})
    extra = one(render({"config": {"ONLINE_TRAIN_MIN_NEW": 500, "ONLINE_SHADOW_SHARE": "0.1"}}), "ConfigMap")
    assert extra["data"]["ONLINE_TRAIN_MIN_NEW"] == "500" and extra["data"]["ONLINE_SHADOW_SHARE"] == "0.1"


def test_the_redis_password_reaches_redis_py_intact():
    import redis

    password = "p w+@/:%x"
    secret = one(render({"redis": {"password": password, "database": 3}}), "Secret")
    url = base64.b64decode(secret["data"]["ONLINE_REDIS_URL"]).decode()
    kwargs = redis.ConnectionPool.from_url(url).connection_kwargs
    assert kwargs["password"] == password and kwargs["db"] == 3


def test_an_existing_secret_replaces_the_charts_own():
    objects = render({"secrets": {"existingSecret": "online-secrets", "adminToken": "ignored"}})
    assert not [o for o in objects if o["kind"] == "Secret"]
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        assert {"secretRef": {"name": "online-secrets"}} in container(deployment)["envFrom"]


def test_consumers_are_capped_at_the_partition_count():
    objects = render({"consumer": {"replicas": 12}, "kafka": {"partitions": 6}})
    assert one(objects, "Deployment", "consumer")["spec"]["replicas"] == 6
    assert one(objects, "ConfigMap")["data"]["ONLINE_FEEDBACK_PARTITIONS"] == "6"
    assert one(render({"consumer": {"replicas": 3}}), "Deployment", "consumer")["spec"]["replicas"] == 3


def test_the_trainer_gets_the_gpu_node_pool_only_when_asked(default, gpu):
    plain = one(default, "Deployment", "trainer")
    assert plain["spec"]["replicas"] == 1
    assert "nvidia.com/gpu" not in container(plain)["resources"].get("limits", {})
    assert "nodeSelector" not in plain["spec"]["template"]["spec"]

    trainer = one(gpu, "Deployment", "trainer")
    pod, c = trainer["spec"]["template"]["spec"], container(trainer)
    assert trainer["spec"]["replicas"] == 2  # one leads (the Redis lock), one stands by
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"name": "ONLINE_DEVICE", "value": "cuda"} in c["env"]
    # the GPU is the trainer's alone
    for part in ("api", "consumer"):
        assert "nvidia.com/gpu" not in container(one(gpu, "Deployment", part))["resources"].get("limits", {})


def test_the_servicemonitor_is_off_by_default_and_scrapes_every_part_when_on(default, gpu):
    assert not [o for o in default if o["kind"] == "ServiceMonitor"]
    monitor = one(gpu, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    scraped = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    for part in ("api", "consumer", "trainer"):
        service = one(gpu, "Service", part)
        assert {p["name"] for p in service["spec"]["ports"]} & scraped, part
        labels = service["metadata"]["labels"]
        for rule in monitor["spec"]["selector"]["matchExpressions"]:
            assert labels[rule["key"]] in rule["values"]


def test_every_pod_runs_as_the_images_user_on_a_read_only_root(default):
    uid = int(re.search(r"useradd --uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    for deployment in (o for o in default if o["kind"] == "Deployment"):
        pod, c = deployment["spec"]["template"]["spec"], container(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert {"/state", "/tmp"} <= set(mounts)  # where the process writes: volumes
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/state"]]
        assert pod["automountServiceAccountToken"] is False


def test_bad_addresses_are_refused_before_anything_is_applied():
    with pytest.raises(helm.HelmError):
        render({"redis": {"sentinels": ["no-port"]}})
    with pytest.raises(helm.HelmError):
        render({"modelStore": {"bucket": "Not_A_Bucket"}})
