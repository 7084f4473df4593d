/**
 * Offline checks of k8s/: every object the kustomization lists parses and passes the Kubernetes
 * OpenAPI schema (kubernetes-models' validate()), and the pieces agree with each other and with
 * the Dockerfile: probes hit the gRPC port, the Service selects the Deployment's pods, the image
 * is the one scripts/build-image.sh tags, the settings match the image's defaults.
 * When kubectl is on PATH, `kubectl kustomize k8s/` renders too and its output is checked again.
 */
import { kubectlTool, kustomize } from "./support/kustomize.ts";
import { Deployment } from "kubernetes-models/apps/v1";
import { ConfigMap, PersistentVolumeClaim, Service } from "kubernetes-models/v1";
import type { IContainer } from "kubernetes-models/v1/Container";
import type { IProbe } from "kubernetes-models/v1/Probe";
import { parseAllDocuments } from "yaml";
import { assert, assertEquals, assertMatch } from "./assert.ts";

const root = new URL("../", import.meta.url);
const k8sDir = new URL("k8s/", root);
const baseDir = new URL("base/", k8sDir);
const GRPC_PORT = 50051;
/** The uid/gid the Dockerfile creates and runs as. */
const APP_UID = 10001;

type Obj = Record<string, unknown> & { kind: string; metadata: { name: string } };

interface Kustomization {
  resources: string[];
  labels?: { pairs: Record<string, string>; includeSelectors?: boolean }[];
  images?: { name: string; newName?: string; newTag?: string }[];
}

function parseYaml(text: string, where: string): Obj[] {
  const out: Obj[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new SyntaxError(`${where}: ${doc.errors[0].message}`);
    const value = doc.toJS();
    if (value !== null && value !== undefined) out.push(value as Obj);
  }
  return out;
}

const kustomization = parseYaml(
  await Deno.readTextFile(new URL("kustomization.yaml", baseDir)),
  "k8s/base/kustomization.yaml",
)[0] as unknown as Kustomization;

async function loadResources(): Promise<Obj[]> {
  const objs: Obj[] = [];
  for (const file of kustomization.resources) {
    objs.push(...parseYaml(await Deno.readTextFile(new URL(file, baseDir)), `k8s/base/${file}`));
  }
  return objs;
}

/** Schema-validates one object with its kubernetes-models class; throws naming the object. */
function validate(obj: Obj): void {
  const where = `${obj.kind}/${obj.metadata?.name}`;
  try {
    switch (`${obj.apiVersion} ${obj.kind}`) {
      case "apps/v1 Deployment":
        new Deployment(obj as never).validate();
        break;
      case "v1 Service":
        new Service(obj as never).validate();
        break;
      case "v1 ConfigMap":
        new ConfigMap(obj as never).validate();
        break;
      case "v1 PersistentVolumeClaim":
        new PersistentVolumeClaim(obj as never).validate();
        break;
      default:
        throw new TypeError(`no validator for ${obj.apiVersion} ${obj.kind}: add one to this test`);
    }
  } catch (e) {
    throw new Error(`${where} is invalid: ${(e as Error).message}`);
  }
}

function only(objs: Obj[], kind: string): Obj {
  const found = objs.filter((o) => o.kind === kind);
  assertEquals(found.length, 1, `expected exactly one ${kind}, found ${found.length}`);
  return found[0];
}

function named(objs: Obj[], kind: string, name: string): Obj {
  const found = objs.find((o) => o.kind === kind && o.metadata.name === name);
  assert(found, `expected the ${kind} ${name}`);
  return found;
}

interface Parts {
  deployment: Deployment;
  /** The gRPC Service. */
  service: Service;
  /** The headless Service Prometheus scrapes through. */
  metricsService: Service;
  configMap: ConfigMap;
  pvc: PersistentVolumeClaim;
  container: IContainer;
}

function parts(objs: Obj[]): Parts {
  const deployment = only(objs, "Deployment") as unknown as Deployment;
  const containers = deployment.spec!.template.spec!.containers;
  assertEquals(containers.length, 1, "the Deployment runs one container");
  return {
    deployment,
    service: named(objs, "Service", "promptlearning") as unknown as Service,
    metricsService: named(objs, "Service", "promptlearning-metrics") as unknown as Service,
    configMap: only(objs, "ConfigMap") as unknown as ConfigMap,
    pvc: only(objs, "PersistentVolumeClaim") as unknown as PersistentVolumeClaim,
    container: containers[0],
  };
}

/** `ENV A=1 B=2` lines of the runtime stage of the Dockerfile. */
async function dockerfileEnv(): Promise<Map<string, string>> {
  const text = (await Deno.readTextFile(new URL("Dockerfile", root))).replace(/\\\n/g, " ");
  const env = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^ENV\s+(.*)$/.exec(line.trim());
    if (!m) continue;
    for (const pair of m[1].trim().split(/\s+/)) {
      const eq = pair.indexOf("=");
      if (eq > 0) env.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
  }
  return env;
}

function isSubset(sub: Record<string, string>, sup: Record<string, string>): boolean {
  return Object.entries(sub).every(([k, v]) => sup[k] === v);
}

function checkProbesAndPorts({ deployment, service, container }: Parts): void {
  const named = (container.ports ?? []).find((p) => p.name === "grpc");
  assert(named, "the container names its port grpc");
  assertEquals(named.containerPort, GRPC_PORT);
  const probes: [string, IProbe | undefined][] = [
    ["startupProbe", container.startupProbe],
    ["readinessProbe", container.readinessProbe],
    ["livenessProbe", container.livenessProbe],
  ];
  for (const [name, probe] of probes) {
    assert(probe, `${name} is set`);
    assert(probe.grpc, `${name} is a native gRPC probe`);
    assertEquals(probe.grpc.port, named.containerPort, `${name} targets the grpc port`);
    assert(!probe.grpc.service, `${name} checks the overall health (service "")`);
  }
  // Start-up (model load) gets a longer budget than liveness before the pod is restarted.
  const s = container.startupProbe!;
  const l = container.livenessProbe!;
  assert(
    (s.periodSeconds ?? 10) * (s.failureThreshold ?? 3) >=
      (l.periodSeconds ?? 10) * (l.failureThreshold ?? 3),
    "startupProbe allows at least as long as livenessProbe",
  );

  const ports = service.spec!.ports!;
  assertEquals(ports.length, 1);
  assertEquals(ports[0].name, "grpc");
  assertEquals(ports[0].port, GRPC_PORT);
  assertEquals(ports[0].appProtocol, "grpc");
  assert(
    ports[0].targetPort === "grpc" || ports[0].targetPort === GRPC_PORT,
    `Service targetPort ${ports[0].targetPort} is the container's grpc port`,
  );
  assertEquals(service.spec!.type ?? "ClusterIP", "ClusterIP");
  assertEquals(deployment.spec!.template.spec!.terminationGracePeriodSeconds, 30);
}

/**
 * /metrics: METRICS_PORT is the container's port "metrics", which the headless Service targets
 * for every pod, ready or not, and which the pods' scrape annotations name.
 */
function checkMetrics({ deployment, configMap, container, metricsService }: Parts): void {
  const port = (container.ports ?? []).find((p) => p.name === "metrics");
  assert(port, "the container names its port metrics");
  assertEquals(configMap.data!.METRICS_PORT, String(port.containerPort));
  const spec = metricsService.spec!;
  assertEquals(spec.clusterIP, "None", "headless: Prometheus sees each pod");
  assertEquals(spec.publishNotReadyAddresses, true, "pods not ready for gRPC are scraped too");
  assertEquals(spec.ports!.map((p) => [p.name, p.targetPort]), [["metrics", "metrics"]]);
  const pod = deployment.spec!.template.metadata!;
  // Unrendered, the pods carry the kustomization's common labels only once kustomize adds them.
  const common = Object.assign({}, ...(kustomization.labels ?? []).map((l) => l.pairs));
  assert(
    isSubset(spec.selector!, { ...common, ...pod.labels }),
    "the metrics Service selects the pods",
  );
  assertEquals(pod.annotations?.["prometheus.io/port"], String(port.containerPort));
  assertEquals(pod.annotations?.["prometheus.io/path"], "/metrics");
}

function checkSelectors({ deployment, service }: Parts): void {
  const podLabels = deployment.spec!.template.metadata!.labels!;
  const matchLabels = deployment.spec!.selector.matchLabels!;
  assert(isSubset(matchLabels, podLabels), "the Deployment's selector matches its pod labels");
  const selector = service.spec!.selector!;
  assert(Object.keys(selector).length > 0, "the Service has a selector");
  assert(
    isSubset(selector, podLabels),
    `Service selector ${JSON.stringify(selector)} selects pods labelled ${
      JSON.stringify(podLabels)
    }`,
  );
}

function checkWiring(objs: Obj[], { deployment, configMap, pvc, container }: Parts): void {
  const pod = deployment.spec!.template.spec!;
  assertEquals(deployment.spec!.replicas, 1, "one replica: state is on a ReadWriteOnce volume");
  assertEquals(deployment.spec!.strategy?.type, "Recreate");
  assert(
    !objs.some((o) => o.kind === "HorizontalPodAutoscaler"),
    "no HorizontalPodAutoscaler (state on the PVC)",
  );

  // Settings come from the ConfigMap.
  const fromConfigMap = (container.envFrom ?? []).map((e) => e.configMapRef?.name);
  assert(
    fromConfigMap.includes(configMap.metadata!.name),
    "the container takes its environment from the ConfigMap",
  );
  // The token comes from a Secret key that must be there: without it the pod does not start.
  const token = (container.env ?? []).find((e) => e.name === "AUTH_TOKEN");
  assert(token?.valueFrom?.secretKeyRef, "AUTH_TOKEN comes from a Secret");
  assertEquals(
    token.valueFrom.secretKeyRef.optional,
    false,
    "the Secret is required (fail closed)",
  );

  // The registry lives on the PVC.
  const data = (pod.volumes ?? []).find((v) =>
    v.persistentVolumeClaim?.claimName === pvc.metadata!.name
  );
  assert(data, "a volume mounts the PersistentVolumeClaim");
  const mount = (container.volumeMounts ?? []).find((m) => m.name === data.name);
  assert(mount, "the container mounts the PVC volume");
  const registryDir = configMap.data!.REGISTRY_DIR;
  assert(
    registryDir === mount.mountPath || registryDir.startsWith(`${mount.mountPath}/`),
    `REGISTRY_DIR ${registryDir} is on the PVC mounted at ${mount.mountPath}`,
  );
  assert(pvc.spec!.accessModes!.includes("ReadWriteOnce"));
  assert(pvc.spec!.resources!.requests!.storage, "the PVC requests storage");

  // Non-root, read-only root filesystem (a writable /tmp is mounted).
  assertEquals(pod.securityContext?.runAsNonRoot, true);
  assertEquals(pod.securityContext?.runAsUser, APP_UID, "runAsUser is the image's app user");
  assertEquals(pod.securityContext?.fsGroup, APP_UID, "the PVC is writable by the app group");
  assertEquals(container.securityContext?.allowPrivilegeEscalation, false);
  if (container.securityContext?.readOnlyRootFilesystem) {
    assert(
      (container.volumeMounts ?? []).some((m) => m.mountPath === "/tmp"),
      "a read-only root filesystem needs a writable /tmp",
    );
  }

  // Resources sized for the model: about 1 GiB requested, a limit above the request.
  const res = container.resources!;
  assertEquals(res.requests?.memory, "1Gi");
  assert(res.limits?.memory, "a memory limit is set");
  assert(res.requests?.cpu, "a CPU request is set");
  const cpuLimit = Number(res.limits?.cpu);
  assert(Number.isInteger(cpuLimit) && cpuLimit > 0, "a whole-core CPU limit is set");
  assertEquals(configMap.data!.THREADS, String(cpuLimit), "BLAS threads match the CPU limit");

  // The server's drain fits in the pod's grace period.
  const graceMs = Number(configMap.data!.SHUTDOWN_GRACE_MS);
  const graceS = pod.terminationGracePeriodSeconds!;
  assert(
    graceMs > 0 && graceMs + 5_000 <= graceS * 1000,
    `SHUTDOWN_GRACE_MS ${graceMs} leaves 5 s of terminationGracePeriodSeconds ${graceS}`,
  );
}

async function checkImageAndDefaults(kust: Kustomization, parts: Parts): Promise<void> {
  const pkg = JSON.parse(await Deno.readTextFile(new URL("package.json", root)));
  const script = await Deno.readTextFile(new URL("scripts/build-image.sh", root));
  assertMatch(script, /IMAGE="\$\{IMAGE:-promptlearning:\$\{version/);
  const image = parts.container.image!;
  const [name, tag] = image.split(":");
  assertEquals(name, "promptlearning", "the image scripts/build-image.sh builds");
  const override = (kust.images ?? []).find((i) => i.name === name);
  assert(override, "kustomization.yaml pins the image's tag");
  assertEquals(tag ?? override.newTag, pkg.version, "the image tag is package.json's version");

  // The ConfigMap repeats the image's defaults, so a pod and `docker run` behave the same.
  const env = await dockerfileEnv();
  const cm = parts.configMap.data!;
  for (const key of ["HOST", "PORT", "METRICS_PORT", "REGISTRY_DIR", "MODEL_DIR", "BACKEND"]) {
    assertEquals(cm[key], env.get(key), `ConfigMap ${key} equals the Dockerfile's ENV ${key}`);
  }
  assertEquals(env.get("PORT"), String(GRPC_PORT));
  assertEquals(cm.PORT, String(GRPC_PORT));
}

Deno.test("k8s: every listed resource parses and passes the Kubernetes schema", async () => {
  const objs = await loadResources();
  assertEquals(
    objs.map((o) => o.kind).sort(),
    ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "Service"],
  );
  for (const obj of objs) validate(obj);
});

Deno.test("k8s: a schema error is reported with the field that is wrong", () => {
  const bad = {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "bad" },
    spec: {
      selector: {},
      template: {
        spec: { containers: [{ name: "c", livenessProbe: { grpc: { port: "grpc" } } }] },
      },
    },
  } as unknown as Obj;
  let message = "";
  try {
    validate(bad);
  } catch (e) {
    message = (e as Error).message;
  }
  assert(message.includes("livenessProbe/grpc/port"), `got ${JSON.stringify(message)}`);
});

Deno.test("k8s: probes are native gRPC probes on the port the Service exposes", async () => {
  checkProbesAndPorts(parts(await loadResources()));
});

Deno.test("k8s: /metrics is on the port the ConfigMap, the metrics Service and the annotations name", async () => {
  checkMetrics(parts(await loadResources()));
});

Deno.test("k8s: the Service and the Deployment's selector pick the Deployment's pods", async () => {
  checkSelectors(parts(await loadResources()));
});

Deno.test("k8s: ConfigMap, required Secret key, PVC and non-root settings are wired", async () => {
  const objs = await loadResources();
  checkWiring(objs, parts(objs));
});

Deno.test("k8s: the image and its defaults match the Dockerfile and package.json", async () => {
  await checkImageAndDefaults(kustomization, parts(await loadResources()));
});

const kubectlCheck = kubectlTool("k8s_manifests_test.ts");

Deno.test({
  name: "k8s: `kubectl kustomize k8s/` renders objects that pass the same checks",
  ignore: kubectlCheck.ignore,
  async fn() {
    kubectlCheck.check();
    const objs = parseYaml(
      await kustomize(new URL(".", k8sDir).pathname),
      "kubectl kustomize k8s/",
    );
    for (const obj of objs) validate(obj);
    const p = parts(objs);
    checkProbesAndPorts(p);
    checkSelectors(p);
    checkMetrics(p);
    checkWiring(objs, p);
    await checkImageAndDefaults(kustomization, p);
    // The kustomization's common labels reach the selectors and the pods.
    for (const { pairs } of kustomization.labels ?? []) {
      assert(isSubset(pairs, p.service.spec!.selector!), "common labels are in the selector");
      assert(isSubset(pairs, p.deployment.spec!.template.metadata!.labels!));
    }
    assertEquals(p.container.image, `promptlearning:${kustomization.images![0].newTag}`);
  },
});

Deno.test({
  name: "k8s: the no-auth overlay, the one way to run open, renders without AUTH_TOKEN",
  ignore: kubectlCheck.ignore,
  async fn() {
    kubectlCheck.check();
    const dir = new URL("overlays/no-auth/", k8sDir).pathname;
    const objs = parseYaml(await kustomize(dir), "kubectl kustomize no-auth");
    for (const obj of objs) validate(obj);
    const p = parts(objs);
    assertEquals((p.container.env ?? []).some((e) => e.name === "AUTH_TOKEN"), false);
  },
});
