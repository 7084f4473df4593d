/**
 * The scaled-out deployment (k8s/overlays/postgres) and the development database
 * (k8s/dev-postgres), rendered with `kubectl kustomize` and every object validated offline
 * against the Kubernetes schemas (kubernetes-models); then the pieces are checked to agree: 2+
 * replicas rolling one at a time, DATABASE_URL from the Secret the dev database creates, no
 * ReadWriteOnce volume left, an HPA on the Deployment and a PDB selecting its pods.
 */
import { kubectlTool, kustomize } from "./support/kustomize.ts";
import { Deployment } from "kubernetes-models/apps/v1";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ConfigMap, PersistentVolumeClaim, Secret, Service } from "kubernetes-models/v1";
import { parseAllDocuments } from "yaml";
import { assert, assertEquals } from "./assert.ts";

const k8s = new URL("../k8s/", import.meta.url);
type Obj = Record<string, unknown> & {
  kind: string;
  apiVersion: string;
  metadata: { name: string };
};

const VALIDATORS: Record<string, (o: Obj) => { validate(): void }> = {
  "apps/v1 Deployment": (o) => new Deployment(o as never),
  "autoscaling/v2 HorizontalPodAutoscaler": (o) => new HorizontalPodAutoscaler(o as never),
  "policy/v1 PodDisruptionBudget": (o) => new PodDisruptionBudget(o as never),
  "v1 ConfigMap": (o) => new ConfigMap(o as never),
  "v1 Secret": (o) => new Secret(o as never),
  "v1 Service": (o) => new Service(o as never),
  "v1 PersistentVolumeClaim": (o) => new PersistentVolumeClaim(o as never),
};

async function render(dir: string): Promise<Obj[]> {
  const objs = parseAllDocuments(await kustomize(new URL(dir, k8s).pathname))
    .map((d) => d.toJS() as Obj).filter((o) => o !== null);
  for (const o of objs) {
    const make = VALIDATORS[`${o.apiVersion} ${o.kind}`];
    if (!make) throw new TypeError(`no validator for ${o.apiVersion} ${o.kind} (${dir})`);
    try {
      make(o).validate();
    } catch (e) {
      throw new Error(`${dir}: ${o.kind}/${o.metadata.name} is invalid: ${(e as Error).message}`);
    }
  }
  return objs;
}

function one<T>(objs: Obj[], kind: string): T {
  const found = objs.filter((o) => o.kind === kind);
  assertEquals(found.length, 1, `one ${kind}`);
  return found[0] as unknown as T;
}

const kubectlCheck = kubectlTool("k8s_postgres_overlay_test.ts");

Deno.test({
  name: "k8s: every overlay and the dev database render and pass the Kubernetes schemas",
  ignore: kubectlCheck.ignore,
  async fn() {
    kubectlCheck.check();
    const overlays = [...Deno.readDirSync(new URL("overlays/", k8s))].map((e) => e.name).sort();
    assert(overlays.includes("postgres") && overlays.includes("gpu"), overlays.join(","));
    for (const dir of [".", "base", "dev-postgres", ...overlays.map((o) => `overlays/${o}`)]) {
      assert((await render(dir)).length > 0, `${dir} renders objects`);
    }
  },
});

/** The Deployment whose pods carry `app.kubernetes.io/component: <component>`. */
function deployment(objs: Obj[], component: string): Deployment {
  const found = objs.filter((o) =>
    o.kind === "Deployment" &&
    (o as unknown as Deployment).spec!.template.metadata!.labels![
        "app.kubernetes.io/component"
      ] === component
  );
  assertEquals(found.length, 1, `one Deployment of ${component}s`);
  return found[0] as unknown as Deployment;
}

const envOf = (dep: Deployment) => dep.spec!.template.spec!.containers[0].env ?? [];

Deno.test({
  name:
    "k8s/overlays/postgres: 2+ serving replicas rolling, DATABASE_URL from a Secret, HPA and PDB",
  ignore: kubectlCheck.ignore,
  async fn() {
    kubectlCheck.check();
    const objs = await render("overlays/postgres");
    assertEquals(objs.filter((o) => o.kind === "PersistentVolumeClaim").length, 0);
    const dep = deployment(objs, "server");
    assert(dep.spec!.replicas! >= 2, `replicas ${dep.spec!.replicas}`);
    assertEquals(dep.spec!.strategy!.type, "RollingUpdate");
    assertEquals(dep.spec!.strategy!.rollingUpdate!.maxUnavailable, 0);
    const pod = dep.spec!.template.spec!;
    assertEquals(pod.volumes!.some((v) => v.persistentVolumeClaim), false, "no RWO volume");
    const env = envOf(dep);
    const url = env.find((e) => e.name === "DATABASE_URL");
    assertEquals(url?.valueFrom?.secretKeyRef?.name, "promptlearning-database");
    assertEquals(url?.valueFrom?.secretKeyRef?.key, "url");
    assert(env.some((e) => e.name === "AUTH_TOKEN"), "auth stays required");
    const config = one<ConfigMap>(objs, "ConfigMap");
    assert(Number(config.data!.JOB_LEASE_MS) >= 1000);

    const hpa = objs.filter((o) => o.kind === "HorizontalPodAutoscaler")
      .map((o) => o as unknown as HorizontalPodAutoscaler)
      .find((h) => h.spec!.scaleTargetRef.name === dep.metadata!.name)!;
    assertEquals(hpa.spec!.scaleTargetRef.kind, "Deployment");
    assert(hpa.spec!.minReplicas! >= 2 && hpa.spec!.maxReplicas > hpa.spec!.minReplicas!);

    const pdb = one<PodDisruptionBudget>(objs, "PodDisruptionBudget");
    const podLabels = dep.spec!.template.metadata!.labels!;
    for (const [k, v] of Object.entries(pdb.spec!.selector!.matchLabels!)) {
      assertEquals(podLabels[k], v, `the PDB selects the pods by ${k}`);
    }
    assert(Number(pdb.spec!.minAvailable) < dep.spec!.replicas!, "a drain can proceed");
  },
});

Deno.test({
  name: "k8s/overlays/postgres: serving replicas (REPLICA_ROLE=serve, ready on health " +
    '"inference") behind the Service; training workers (train) outside it, scaled on the job queue',
  ignore: kubectlCheck.ignore,
  async fn() {
    kubectlCheck.check();
    const objs = await render("overlays/postgres");
    const serve = deployment(objs, "server"), train = deployment(objs, "trainer");
    const role = (d: Deployment) => envOf(d).find((e) => e.name === "REPLICA_ROLE")?.value;
    assertEquals([role(serve), role(train)], ["serve", "train"]);
    const probe = (d: Deployment) => d.spec!.template.spec!.containers[0].readinessProbe?.grpc;
    assertEquals([probe(serve)?.service, probe(train)?.service], ["inference", "training"]);
    // Same container but for the role: image, config, auth and database.
    const [s, t] = [serve, train].map((d) => d.spec!.template.spec!.containers[0]);
    assertEquals(t.image, s.image);
    assertEquals(t.envFrom, s.envFrom);
    for (const name of ["AUTH_TOKEN", "DATABASE_URL"]) {
      assertEquals(
        envOf(train).find((e) => e.name === name),
        envOf(serve).find((e) => e.name === name),
        name,
      );
    }
    assertEquals(t.securityContext, s.securityContext);
    assertEquals(
      train.spec!.template.spec!.volumes!.some((v) => v.persistentVolumeClaim),
      false,
      "no RWO volume",
    );
    // The Service sends traffic to the serving pods only.
    const svc = objs.find((o) => o.kind === "Service" && o.metadata.name === "promptlearning") as
      | Service
      | undefined;
    assert(svc, "the Service promptlearning");
    const selects = (d: Deployment) =>
      Object.entries(svc.spec!.selector!).every(([k, v]) =>
        d.spec!.template.metadata!.labels![k] === v
      );
    assertEquals([selects(serve), selects(train)], [true, false]);
    // Each Deployment's selector matches its own pods only.
    for (const d of [serve, train]) {
      const other = d === serve ? train : serve;
      const sel = Object.entries(d.spec!.selector!.matchLabels!);
      assert(sel.every(([k, v]) => d.spec!.template.metadata!.labels![k] === v));
      assert(!sel.every(([k, v]) => other.spec!.template.metadata!.labels![k] === v));
    }
    const hpa = objs.filter((o) => o.kind === "HorizontalPodAutoscaler")
      .map((o) => o as unknown as HorizontalPodAutoscaler)
      .find((h) => h.spec!.scaleTargetRef.name === train.metadata!.name);
    assert(hpa, "an HPA scales the training workers");
    const metric = hpa.spec!.metrics![0];
    assertEquals(metric.type, "External");
    // The gauge the service exports at /metrics (telemetry/service_metrics.ts).
    assertEquals(metric.external!.metric.name, "promptlearning_jobs_waiting");
    // Both kinds of pod export it (and the rest of /metrics) on the port the ServiceMonitor's
    // headless Service targets.
    const metrics = objs.find((o) => o.metadata.name === "promptlearning-metrics") as
      | Service
      | undefined;
    for (const d of [serve, train]) {
      assert(
        Object.entries(metrics!.spec!.selector!).every(([k, v]) =>
          d.spec!.template.metadata!.labels![k] === v
        ),
        `promptlearning-metrics lists the pods of ${d.metadata!.name}`,
      );
      const port = d.spec!.template.spec!.containers[0].ports!.find((p) => p.name === "metrics");
      assertEquals(port?.containerPort, 9464, `${d.metadata!.name} exposes its metrics port`);
    }
    assert(hpa.spec!.minReplicas! >= 1 && hpa.spec!.maxReplicas > hpa.spec!.minReplicas!);
  },
});

Deno.test({
  name: "k8s/dev-postgres: a database and the Secret the postgres overlay reads, pointing at it",
  ignore: kubectlCheck.ignore,
  async fn() {
    kubectlCheck.check();
    const objs = await render("dev-postgres");
    const secret = objs.find((o) =>
      o.kind === "Secret" && o.metadata.name === "promptlearning-database"
    ) as
      | Secret
      | undefined;
    const url = new URL(secret!.stringData!.url);
    const svc = one<Service>(objs, "Service");
    assertEquals(url.hostname, svc.metadata!.name);
    assertEquals(Number(url.port), svc.spec!.ports![0].port);
    const dep = one<Deployment>(objs, "Deployment");
    for (const [k, v] of Object.entries(svc.spec!.selector!)) {
      assertEquals(dep.spec!.template.metadata!.labels![k], v, `the Service selects by ${k}`);
    }
  },
});
